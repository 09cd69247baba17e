//! Byte sizes as operators write them: `64MiB`, `2GiB`, `500k`, or plain bytes.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("'{0}' is not a size (expected bytes, or a number with a unit such as 64MiB, 2GiB, 500kB)")]
    Invalid(String),
    #[error("'{0}' is too large")]
    Overflow(String),
}

/// Parses `64MiB`, `2GiB`, `10MB`, `500k`, `1024`. Binary units (KiB, MiB, GiB, TiB) are powers of 1024,
/// decimal ones (kB/k, MB/M, GB/G, TB/T) powers of 1000; `B` may be omitted. Case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| SizeError::Invalid(text.to_string()))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => return Err(SizeError::Invalid(text.to_string())),
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(SizeError::Overflow(text.to_string()));
    }
    Ok(bytes.round() as u64)
}

/// Formats a byte count for people: `1.5 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a bit rate as people write it: `400k`, `1.2M`, `3000000`, `3Mbps`. Returns bits per second.
pub fn parse_bitrate(text: &str) -> Result<u64, SizeError> {
    let lowered = text.trim().to_ascii_lowercase();
    let without_suffix = lowered.strip_suffix("bps").or_else(|| lowered.strip_suffix("bit/s")).unwrap_or(&lowered);
    if without_suffix.contains('i') {
        return Err(SizeError::Invalid(text.to_string()));
    }
    parse_size(without_suffix).map_err(|e| match e {
        SizeError::Invalid(_) => SizeError::Invalid(text.to_string()),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_plain_sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1.5k"), Ok(1500));
        assert_eq!(parse_size(" 3 gib "), Ok(3 << 30));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("lots"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("12 parsecs"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("-5MiB"), Err(SizeError::Invalid(_))));
    }

    #[test]
    fn parses_bitrates() {
        assert_eq!(parse_bitrate("400k"), Ok(400_000));
        assert_eq!(parse_bitrate("1.2M"), Ok(1_200_000));
        assert_eq!(parse_bitrate("3Mbps"), Ok(3_000_000));
        assert!(parse_bitrate("3Mi").is_err());
    }

    #[test]
    fn formats_sizes_for_people() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(3 << 20), "3.0 MiB");
    }
}
