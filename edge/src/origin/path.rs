//! The one check of request paths that every origin relies on: no path may leave an origin's root.
//!
//! A path is judged on its *decoded* segments, because the places it goes next decode it: a URL parser
//! resolves `%2e%2e` like `..` (WHATWG URL Standard, "single-dot/double-dot URL path segment"), and a
//! file system sees the decoded name. RFC 3986 §5.2.4 defines the dot segments removed during
//! resolution; an edge that refuses them up front cannot be walked out of an origin's path prefix.

use percent_encoding::percent_decode;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// A `.` or `..` segment, raw or percent-encoded in any case (`%2e`, `%2E`, `.%2e`, …), or one
    /// formed by an encoded slash or backslash (`..%2f`, `..%5c`).
    DotSegment,
    /// A NUL byte (raw or `%00`): it ends strings in the file system's APIs.
    Nul,
    /// Percent-encoding that does not decode to UTF-8, so the path cannot be judged.
    NotUtf8,
}

impl PathRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            PathRefusal::DotSegment => "path has a dot segment (. or ..), which could leave the origin's root",
            PathRefusal::Nul => "path has a NUL byte",
            PathRefusal::NotUtf8 => "path does not decode to UTF-8",
        }
    }
}

/// Checks the path part of a request target (no query).
pub fn check(path: &str) -> Result<(), PathRefusal> {
    let decoded = percent_decode(path.as_bytes()).decode_utf8().map_err(|_| PathRefusal::NotUtf8)?;
    if decoded.contains('\0') {
        return Err(PathRefusal::Nul);
    }
    // Backslashes count as separators: WHATWG URL parsing treats them so for http(s), and so do
    // some origin servers.
    if decoded.split(['/', '\\']).any(|segment| segment == "." || segment == "..") {
        return Err(PathRefusal::DotSegment);
    }
    Ok(())
}

/// Whether any decoded segment of the path names a hidden file (starts with `.`), like `/.env` or
/// `/.git/config`. Directory origins answer these with 404 unless configured otherwise.
pub fn has_hidden_segment(path: &str) -> bool {
    let decoded = percent_decode(path.as_bytes()).decode_utf8_lossy();
    decoded.split(['/', '\\']).any(|segment| segment.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_refused_raw_or_encoded_in_any_case() {
        for path in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2e/secret.txt",
            "/.%2E/x",
            "/a/./b",
            "/a/%2e/b",
            "/..%2fsecret.txt",
            "/..%2Fsecret.txt",
            "/..%5csecret.txt",
            "/a/..",
            "/..",
            "/.",
        ] {
            assert_eq!(check(path), Err(PathRefusal::DotSegment), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_and_dotted_names_pass() {
        for path in ["/", "/a/b.ts", "/v1/seg_00001.m4s", "/a..b/c", "/...", "/.well-known/x", "/a%20b"] {
            assert_eq!(check(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn nul_and_bad_encodings_are_refused() {
        assert_eq!(check("/a%00b"), Err(PathRefusal::Nul));
        assert_eq!(check("/a%ffb"), Err(PathRefusal::NotUtf8));
    }

    #[test]
    fn hidden_segments_are_found() {
        assert!(has_hidden_segment("/.env"));
        assert!(has_hidden_segment("/a/.git/config"));
        assert!(has_hidden_segment("/%2egit/config"));
        assert!(!has_hidden_segment("/a/b.ts"));
    }
}
