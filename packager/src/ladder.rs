//! The bitrate ladder: which renditions to make, parsed from `240p:400k,480p:1200k,720p:3000k`.

use eddy_shared::size::parse_bitrate;
use thiserror::Error;

/// The ladder used when `--ladder` is not given.
pub const DEFAULT_LADDER: &str = "240p:400k,480p:1200k,720p:3000k";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LadderError {
    #[error("the ladder is empty (expected e.g. {DEFAULT_LADDER})")]
    Empty,
    #[error("ladder rung '{0}' is not NAME:BITRATE (e.g. 480p:1200k)")]
    NotNameColonBitrate(String),
    #[error("ladder rung name '{0}' is not a height such as 480p (an even number of lines, 32 to 4320, then 'p')")]
    BadHeight(String),
    #[error("ladder rung '{rung}': '{bitrate}' is not a bitrate (expected e.g. 400k or 1.2M, at least 16k)")]
    BadBitrate { rung: String, bitrate: String },
    #[error("ladder rung '{0}' appears twice")]
    Duplicate(String),
}

/// One rendition to produce: its folder name (the ladder label), picture height and video bitrate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rung {
    /// The label as written (`240p`); also the rendition's folder name.
    pub name: String,
    pub height: u32,
    /// Target video bit rate in bits per second (audio comes on top).
    pub video_bitrate: u64,
}

/// Parses a ladder string. Rungs come back sorted by ascending bitrate (the order of the master
/// playlist), ties broken by height.
pub fn parse_ladder(text: &str) -> Result<Vec<Rung>, LadderError> {
    let mut rungs: Vec<Rung> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, bitrate) = item.split_once(':').ok_or_else(|| LadderError::NotNameColonBitrate(item.to_string()))?;
        let name = name.trim();
        let height = parse_height(name).ok_or_else(|| LadderError::BadHeight(name.to_string()))?;
        let video_bitrate = parse_bitrate(bitrate)
            .ok()
            .filter(|b| *b >= 16_000)
            .ok_or_else(|| LadderError::BadBitrate { rung: name.to_string(), bitrate: bitrate.trim().to_string() })?;
        if rungs.iter().any(|r| r.name == name) {
            return Err(LadderError::Duplicate(name.to_string()));
        }
        rungs.push(Rung { name: name.to_string(), height, video_bitrate });
    }
    if rungs.is_empty() {
        return Err(LadderError::Empty);
    }
    rungs.sort_by_key(|r| (r.video_bitrate, r.height));
    Ok(rungs)
}

fn parse_height(name: &str) -> Option<u32> {
    let digits = name.strip_suffix('p').or_else(|| name.strip_suffix('P'))?;
    let height: u32 = digits.parse().ok()?;
    ((32..=4320).contains(&height) && height.is_multiple_of(2)).then_some(height)
}

/// The even width that keeps the source's display aspect ratio at `height` lines.
pub fn width_for_height(height: u32, display_aspect: f64) -> u32 {
    let width = (f64::from(height) * display_aspect / 2.0).round() as u32 * 2;
    width.max(2)
}

/// Splits the ladder into the rungs to make and the rungs skipped because they are taller than the
/// source (upscaling would spend bits on no extra detail).
pub fn fit_to_source(rungs: &[Rung], source_height: u32) -> (Vec<Rung>, Vec<Rung>) {
    rungs.iter().cloned().partition(|r| r.height <= source_height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_sorts_by_bitrate() {
        let rungs = parse_ladder("720p:3000k, 240p:400k,480p:1.2M").unwrap();
        let names: Vec<_> = rungs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["240p", "480p", "720p"]);
        assert_eq!(rungs[1].height, 480);
        assert_eq!(rungs[1].video_bitrate, 1_200_000);
    }

    #[test]
    fn refuses_bad_ladders_naming_the_rung() {
        assert_eq!(parse_ladder(" , "), Err(LadderError::Empty));
        assert_eq!(parse_ladder("240p:400k,480p"), Err(LadderError::NotNameColonBitrate("480p".into())));
        assert_eq!(parse_ladder("big:400k"), Err(LadderError::BadHeight("big".into())));
        assert_eq!(parse_ladder("241p:400k"), Err(LadderError::BadHeight("241p".into())));
        assert!(matches!(
            parse_ladder("240p:fast"),
            Err(LadderError::BadBitrate { rung, .. }) if rung == "240p"
        ));
        assert!(matches!(parse_ladder("240p:1k"), Err(LadderError::BadBitrate { .. })));
        assert_eq!(parse_ladder("240p:400k,240p:500k"), Err(LadderError::Duplicate("240p".into())));
    }

    #[test]
    fn widths_keep_aspect_and_are_even() {
        assert_eq!(width_for_height(720, 16.0 / 9.0), 1280);
        assert_eq!(width_for_height(240, 16.0 / 9.0), 426);
        assert_eq!(width_for_height(360, 4.0 / 3.0), 480);
    }

    #[test]
    fn skips_rungs_taller_than_the_source() {
        let rungs = parse_ladder("240p:400k,480p:1200k,720p:3000k").unwrap();
        let (kept, skipped) = fit_to_source(&rungs, 480);
        assert_eq!(kept.len(), 2);
        assert_eq!(skipped[0].name, "720p");
    }
}
