//! Media types of the files an HLS service serves, by file extension.

/// The Content-Type for a path, by its extension, as players and browsers expect it.
pub fn content_type_for_path(path: &str) -> &'static str {
    let extension =
        path.rsplit('/').next().and_then(|name| name.rsplit_once('.')).map(|(_, ext)| ext.to_ascii_lowercase());
    match extension.as_deref() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("m4s") | Some("mp4") | Some("m4v") | Some("cmfv") => "video/mp4",
        Some("m4a") | Some("cmfa") => "audio/mp4",
        Some("aac") => "audio/aac",
        Some("vtt") => "text/vtt",
        Some("mpd") => "application/dash+xml",
        Some("key") => "application/octet-stream",
        Some("json") => "application/json",
        Some("html") | Some("htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::content_type_for_path;

    #[test]
    fn hls_types() {
        assert_eq!(content_type_for_path("/a/index.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type_for_path("seg_001.TS"), "video/mp2t");
        assert_eq!(content_type_for_path("/x/init.mp4"), "video/mp4");
        assert_eq!(content_type_for_path("/x/1.m4s"), "video/mp4");
        assert_eq!(content_type_for_path("/k/enc.key"), "application/octet-stream");
        assert_eq!(content_type_for_path("/dir.v2/noext"), "application/octet-stream");
    }
}
