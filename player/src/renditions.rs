//! Which alternative renditions (`EXT-X-MEDIA`, RFC 8216 §4.3.4.1) a playback uses, which audio
//! codecs it can decode, and what `--list` prints. Pure: the session asks GStreamer's registry through
//! the `can_decode` closure it passes in.

use std::fmt::Write as _;

use thiserror::Error;

use crate::playlist::{Master, MediaKind, Rendition, Variant};

#[derive(Debug, Error, PartialEq)]
pub enum SelectError {
    #[error("--audio-lang {wanted}: the stream has no alternative audio renditions")]
    NoAudioRenditions { wanted: String },
    #[error("--audio-lang {wanted}: no audio rendition in that language (the stream has: {available})")]
    NoAudioLanguage { wanted: String, available: String },
    #[error("--subs {wanted}: no subtitle rendition in that language (the stream has: {available})")]
    NoSubtitleLanguage { wanted: String, available: String },
    #[error("cannot play this stream's audio: {0}")]
    UndecodableAudio(String),
}

/// Whether an RFC 5646 tag matches what the user asked for: equal ignoring case, or the asked tag is a
/// prefix of it ending at a subtag boundary (RFC 4647 §3.3.1's basic filtering: `en` matches `en-GB`).
pub fn language_matches(tag: &str, wanted: &str) -> bool {
    let (tag, wanted) = (tag.to_ascii_lowercase(), wanted.to_ascii_lowercase());
    tag == wanted || tag.strip_prefix(&wanted).is_some_and(|rest| rest.starts_with('-'))
}

/// The group of `kind` the variants use: the one most of them name (the first such in playlist order
/// on a tie). Audio then stays in that group for the whole playback.
fn group_of<'a>(variants: &'a [Variant], kind: MediaKind) -> Option<&'a str> {
    let named = |v: &'a Variant| match kind {
        MediaKind::Audio => v.audio_group.as_deref(),
        MediaKind::Subtitles => v.subtitles_group.as_deref(),
        _ => None,
    };
    let mut best: Option<(&str, usize)> = None;
    for group in variants.iter().filter_map(named) {
        let count = variants.iter().filter(|v| named(v) == Some(group)).count();
        if best.is_none_or(|(_, most)| count > most) {
            best = Some((group, count));
        }
    }
    best.map(|(group, _)| group)
}

/// Picks one rendition of `kind` for `variants`: in the language asked for, else the `DEFAULT=YES`
/// one, else the first `AUTOSELECT=YES` one, else the first of the group (RFC 8216 §4.3.4.1.1).
fn select<'a>(
    master: &'a Master,
    variants: &[Variant],
    kind: MediaKind,
    wanted: Option<&str>,
) -> Result<Option<&'a Rendition>, Vec<String>> {
    let Some(group) = group_of(variants, kind) else {
        return match wanted {
            Some(_) => Err(Vec::new()),
            None => Ok(None),
        };
    };
    let members: Vec<&Rendition> = master.renditions.iter().filter(|r| r.kind == kind && r.group_id == group).collect();
    if let Some(wanted) = wanted {
        return members
            .iter()
            .find(|r| r.language.as_deref().is_some_and(|tag| language_matches(tag, wanted)))
            .map(|r| Some(*r))
            .ok_or_else(|| members.iter().map(|r| describe(r)).collect());
    }
    Ok(members
        .iter()
        .find(|r| r.default)
        .or_else(|| members.iter().find(|r| r.autoselect))
        .or_else(|| members.first())
        .copied())
}

/// `NAME (LANGUAGE)`, for messages and `--list`.
fn describe(rendition: &Rendition) -> String {
    match &rendition.language {
        Some(language) => format!("\"{}\" ({language})", rendition.name),
        None => format!("\"{}\"", rendition.name),
    }
}

/// The audio rendition to fetch alongside `variants`, if it has a playlist of its own. `None` when
/// the variants name no audio group, or the chosen rendition has no URI (its audio is in the
/// variant's stream).
pub fn select_audio<'a>(
    master: &'a Master,
    variants: &[Variant],
    wanted: Option<&str>,
) -> Result<Option<&'a Rendition>, SelectError> {
    match select(master, variants, MediaKind::Audio, wanted) {
        Ok(chosen) => Ok(chosen.filter(|r| r.uri.is_some())),
        Err(available) if available.is_empty() => {
            Err(SelectError::NoAudioRenditions { wanted: wanted.unwrap_or_default().to_string() })
        }
        Err(available) => Err(SelectError::NoAudioLanguage {
            wanted: wanted.unwrap_or_default().to_string(),
            available: available.join(", "),
        }),
    }
}

/// The subtitle rendition whose cues are fetched: the one asked for with `--subs`, else the group's
/// default. `None` when the variants name no subtitle group.
pub fn select_subtitles<'a>(
    master: &'a Master,
    variants: &[Variant],
    wanted: Option<&str>,
) -> Result<Option<&'a Rendition>, SelectError> {
    match select(master, variants, MediaKind::Subtitles, wanted) {
        Ok(chosen) => Ok(chosen.filter(|r| r.uri.is_some())),
        Err(available) => Err(SelectError::NoSubtitleLanguage {
            wanted: wanted.unwrap_or_default().to_string(),
            available: if available.is_empty() { "none".into() } else { available.join(", ") },
        }),
    }
}

/// The GStreamer caps of an audio codec named in `CODECS` (RFC 6381 names, as HLS uses them: Apple's
/// HLS authoring specification lists `mp4a.40.*`, `ac-3`, `ec-3`, `fLaC`, `Opus`, `alac`), `None` for
/// an audio codec GStreamer has no caps for; not audio at all: [`is_audio_codec`] says.
pub fn audio_caps(codec: &str) -> Option<&'static str> {
    let lower = codec.to_ascii_lowercase();
    match lower.as_str() {
        // MPEG-1/2 audio layer 3 in MP4 (RFC 6381 §3.3: object types 0x69, 0x6B; 40.34 is MP3 too).
        "mp4a.40.34" | "mp4a.69" | "mp4a.6b" => Some("audio/mpeg, mpegversion=(int)1"),
        _ if lower.starts_with("mp4a.40.") || lower == "mp4a.40" || lower == "mp4a.67" => {
            Some("audio/mpeg, mpegversion=(int)4")
        }
        "ac-3" => Some("audio/x-ac3"),
        "ec-3" => Some("audio/x-eac3"),
        "opus" => Some("audio/x-opus"),
        "flac" => Some("audio/x-flac"),
        "alac" => Some("audio/x-alac"),
        "dtsc" | "dtse" | "dtsh" | "dtsl" | "dtsx" => Some("audio/x-dts"),
        _ => None,
    }
}

/// Whether a `CODECS` entry is an audio format (by its RFC 6381 sample-entry name).
pub fn is_audio_codec(codec: &str) -> bool {
    let lower = codec.to_ascii_lowercase();
    let entry = lower.split('.').next().unwrap_or("");
    matches!(
        entry,
        "mp4a"
            | "ac-3"
            | "ec-3"
            | "ac-4"
            | "opus"
            | "flac"
            | "alac"
            | "dtsc"
            | "dtse"
            | "dtsh"
            | "dtsl"
            | "dtsx"
            | "mha1"
            | "mhm1"
            | "mp3"
    )
}

/// Checks that every audio codec a variant declares can be decoded (`can_decode` gets the caps);
/// the error names the codec and the variant.
pub fn check_audio_codecs(variant: &Variant, can_decode: &dyn Fn(&str) -> bool) -> Result<(), SelectError> {
    let Some(codecs) = &variant.codecs else { return Ok(()) };
    for codec in codecs.split(',').map(str::trim).filter(|c| is_audio_codec(c)) {
        match audio_caps(codec) {
            Some(caps) if can_decode(caps) => {}
            Some(caps) => {
                return Err(SelectError::UndecodableAudio(format!(
                    "variant {} uses audio codec \"{codec}\", and no GStreamer decoder for {caps} is installed",
                    variant.index
                )))
            }
            None => {
                return Err(SelectError::UndecodableAudio(format!(
                    "variant {} uses audio codec \"{codec}\", which GStreamer cannot decode",
                    variant.index
                )))
            }
        }
    }
    Ok(())
}

/// What `--list` prints: the variants in the master's order, then the audio and subtitle groups.
pub fn listing(master: &Master) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "variants:");
    for v in &master.variants {
        let resolution = v.resolution.map_or_else(String::new, |(w, h)| format!(" {w}x{h}"));
        let codecs = v.codecs.as_deref().map_or_else(String::new, |c| format!(" codecs={c}"));
        let audio = v.audio_group.as_deref().map_or_else(String::new, |g| format!(" audio={g}"));
        let subs = v.subtitles_group.as_deref().map_or_else(String::new, |g| format!(" subtitles={g}"));
        let _ = writeln!(out, "  {}: {} kbps{resolution}{codecs}{audio}{subs}", v.index, v.bandwidth_bps / 1000);
    }
    for (kind, title) in [(MediaKind::Audio, "audio"), (MediaKind::Subtitles, "subtitles")] {
        let members: Vec<&Rendition> = master.renditions.iter().filter(|r| r.kind == kind).collect();
        if members.is_empty() {
            let _ = writeln!(out, "{title}: none");
            continue;
        }
        let _ = writeln!(out, "{title}:");
        for r in members {
            let mut flags = Vec::new();
            if r.default {
                flags.push("default");
            }
            if r.autoselect {
                flags.push("autoselect");
            }
            if r.uri.is_none() {
                flags.push("in the variant's stream");
            }
            let channels = r.channels.as_deref().map_or_else(String::new, |c| format!(" channels={c}"));
            let flags = if flags.is_empty() { String::new() } else { format!(" [{}]", flags.join(", ")) };
            let _ = writeln!(out, "  group {}: {}{channels}{flags}", r.group_id, describe(r));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playlist::{parse, Parsed};
    use url::Url;

    fn master(text: &str) -> Master {
        let base = Url::parse("http://example.test/master.m3u8").unwrap_or_else(|_| unreachable!());
        match parse(text.as_bytes(), &base) {
            Ok(Parsed::Master(master)) => master,
            other => panic!("not a master: {other:?}"),
        }
    }

    const TWO_LANGUAGES: &str = "#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"English\",LANGUAGE=\"en-GB\",AUTOSELECT=YES,URI=\"a/en.m3u8\"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"aud\",NAME=\"Deutsch\",LANGUAGE=\"de\",DEFAULT=YES,AUTOSELECT=YES,URI=\"a/de.m3u8\"
#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID=\"subs\",NAME=\"English\",LANGUAGE=\"en\",URI=\"s/en.m3u8\"
#EXT-X-STREAM-INF:BANDWIDTH=500000,CODECS=\"avc1.64001e,mp4a.40.2\",AUDIO=\"aud\",SUBTITLES=\"subs\"
v0.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=1500000,RESOLUTION=1280x720,CODECS=\"avc1.64001f,mp4a.40.2\",AUDIO=\"aud\",SUBTITLES=\"subs\"
v1.m3u8
";

    #[test]
    fn the_default_rendition_is_chosen_unless_a_language_is_asked_for() {
        let m = master(TWO_LANGUAGES);
        let chosen = select_audio(&m, &m.variants, None).ok().flatten().map(|r| r.name.clone());
        assert_eq!(chosen.as_deref(), Some("Deutsch"));
        let chosen = select_audio(&m, &m.variants, Some("EN")).ok().flatten().map(|r| r.uri.clone());
        assert_eq!(chosen.flatten().map(|u| u.to_string()).as_deref(), Some("http://example.test/a/en.m3u8"));
    }

    #[test]
    fn a_language_the_stream_lacks_is_an_error_listing_what_it_has() {
        let m = master(TWO_LANGUAGES);
        let error = select_audio(&m, &m.variants, Some("fr")).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            error,
            "--audio-lang fr: no audio rendition in that language (the stream has: \"English\" (en-GB), \"Deutsch\" (de))"
        );
        let muxed = master("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n");
        assert_eq!(
            select_audio(&muxed, &muxed.variants, Some("fr")),
            Err(SelectError::NoAudioRenditions { wanted: "fr".into() })
        );
    }

    #[test]
    fn without_default_the_first_autoselect_then_the_first_is_chosen() {
        let text = TWO_LANGUAGES.replace("DEFAULT=YES,", "");
        let m = master(&text);
        let chosen = select_audio(&m, &m.variants, None).ok().flatten().map(|r| r.name.clone());
        assert_eq!(chosen.as_deref(), Some("English"));
        let text = text.replace("AUTOSELECT=YES,", "").replace("AUTOSELECT=YES", "");
        let m = master(&text);
        let chosen = select_audio(&m, &m.variants, None).ok().flatten().map(|r| r.name.clone());
        assert_eq!(chosen.as_deref(), Some("English"));
    }

    #[test]
    fn audio_without_a_uri_is_in_the_variant_and_fetches_nothing() {
        let m = master(
            "#EXTM3U\n#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"a\",NAME=\"main\",DEFAULT=YES\n#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO=\"a\"\nv.m3u8\n",
        );
        assert_eq!(select_audio(&m, &m.variants, None), Ok(None));
    }

    #[test]
    fn subtitles_are_chosen_by_language_or_default() {
        let m = master(TWO_LANGUAGES);
        let chosen = select_subtitles(&m, &m.variants, Some("en")).ok().flatten().map(|r| r.name.clone());
        assert_eq!(chosen.as_deref(), Some("English"));
        let error = select_subtitles(&m, &m.variants, Some("ja")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("--subs ja") && error.contains("\"English\" (en)"), "{error}");
    }

    #[test]
    fn a_variant_naming_an_undefined_group_is_refused() {
        let base = Url::parse("http://example.test/master.m3u8").unwrap_or_else(|_| unreachable!());
        let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO=\"missing\"\nv.m3u8\n";
        let error = parse(text.as_bytes(), &base).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("audio group \"missing\", which no EXT-X-MEDIA defines"), "{error}");
    }

    #[test]
    fn languages_match_by_subtag_prefix_only() {
        assert!(language_matches("en-GB", "en"));
        assert!(language_matches("EN", "en"));
        assert!(!language_matches("eng", "en"));
        assert!(!language_matches("en", "en-GB"));
    }

    #[test]
    fn undecodable_audio_codecs_are_named() {
        let m = master(TWO_LANGUAGES);
        let aac_only = |caps: &str| caps.starts_with("audio/mpeg, mpegversion=(int)4");
        assert_eq!(check_audio_codecs(&m.variants[0], &aac_only), Ok(()));
        let mut variant = m.variants[1].clone();
        variant.codecs = Some("avc1.64001f,ec-3".into());
        let error = check_audio_codecs(&variant, &aac_only).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            error,
            "cannot play this stream's audio: variant 1 uses audio codec \"ec-3\", and no GStreamer decoder for audio/x-eac3 is installed"
        );
        variant.codecs = Some("avc1.64001f,mhm1.0x0D".into());
        let error = check_audio_codecs(&variant, &aac_only).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("\"mhm1.0x0D\", which GStreamer cannot decode"), "{error}");
        // Video and text codecs are not this check's business.
        variant.codecs = Some("hvc1.1.6.L93.B0,wvtt".into());
        assert_eq!(check_audio_codecs(&variant, &aac_only), Ok(()));
    }

    #[test]
    fn the_listing_names_variants_and_groups() {
        let text = listing(&master(TWO_LANGUAGES));
        assert!(
            text.contains("  1: 1500 kbps 1280x720 codecs=avc1.64001f,mp4a.40.2 audio=aud subtitles=subs"),
            "{text}"
        );
        assert!(text.contains("  group aud: \"Deutsch\" (de) [default, autoselect]"), "{text}");
        assert!(text.contains("subtitles:\n  group subs: \"English\" (en)\n"), "{text}");
    }
}
