//! Single byte ranges (RFC 9110 §14), answered from a whole object. Several ranges in one request are
//! answered with the whole object, which RFC 9110 allows and players never need.

use http::header::{HeaderMap, IF_RANGE, RANGE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// Serve the whole object (no Range, an unparsable or multi-range one, or an If-Range that no
    /// longer matches).
    Whole,
    /// Serve bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416: the range starts past the end.
    Unsatisfiable,
}

/// Decides what part of an object of `length` bytes with validator `etag` the request asks for.
pub fn answer(request: &HeaderMap, length: u64, etag: Option<&str>) -> RangeAnswer {
    let Some(range) = request.get(RANGE).and_then(|v| v.to_str().ok()) else { return RangeAnswer::Whole };
    if let Some(if_range) = request.get(IF_RANGE).and_then(|v| v.to_str().ok()) {
        // Only a strong ETag comparison can keep a range valid; dates are treated as not matching.
        if etag.is_none_or(|tag| tag.starts_with("W/") || tag != if_range.trim()) {
            return RangeAnswer::Whole;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else { return RangeAnswer::Whole };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeAnswer::Whole };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(suffix) = last.parse::<u64>() else { return RangeAnswer::Whole };
        if suffix == 0 || length == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial { start: length.saturating_sub(suffix), end: length - 1 };
    }
    let Ok(start) = first.parse::<u64>() else { return RangeAnswer::Whole };
    let end = if last.is_empty() {
        length.saturating_sub(1)
    } else {
        match last.parse::<u64>() {
            Ok(end) if end >= start => end.min(length.saturating_sub(1)),
            _ => return RangeAnswer::Whole,
        }
    };
    if start >= length {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(range: &str, length: u64) -> RangeAnswer {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, range.parse().expect("header"));
        answer(&headers, length, Some("\"v1\""))
    }

    #[test]
    fn single_ranges() {
        assert_eq!(ask("bytes=0-99", 1000), RangeAnswer::Partial { start: 0, end: 99 });
        assert_eq!(ask("bytes=900-", 1000), RangeAnswer::Partial { start: 900, end: 999 });
        assert_eq!(ask("bytes=-100", 1000), RangeAnswer::Partial { start: 900, end: 999 });
        assert_eq!(ask("bytes=990-2000", 1000), RangeAnswer::Partial { start: 990, end: 999 });
        assert_eq!(ask("bytes=-5000", 1000), RangeAnswer::Partial { start: 0, end: 999 });
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(ask("bytes=1000-", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=-0", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(ask("bytes=0-1,5-6", 1000), RangeAnswer::Whole);
        assert_eq!(ask("items=0-1", 1000), RangeAnswer::Whole);
        assert_eq!(ask("bytes=5-1", 1000), RangeAnswer::Whole);
        assert_eq!(answer(&HeaderMap::new(), 10, None), RangeAnswer::Whole);
    }

    #[test]
    fn if_range_must_match_the_strong_etag() {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, "bytes=0-1".parse().expect("header"));
        headers.insert(IF_RANGE, "\"v1\"".parse().expect("header"));
        assert_eq!(answer(&headers, 10, Some("\"v1\"")), RangeAnswer::Partial { start: 0, end: 1 });
        assert_eq!(answer(&headers, 10, Some("\"v2\"")), RangeAnswer::Whole);
    }
}
