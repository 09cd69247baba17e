//! The import boundaries ARCHITECTURE.md states, checked on the source and the dependency graph so
//! that a change that crosses one fails here instead of drifting from the document.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

/// Whether `line` mentions `word`: as a whole identifier, or as a substring for a path (`a::b`).
fn mentions_word(line: &str, word: &str) -> bool {
    if word.contains("::") {
        return line.contains(word);
    }
    line.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|identifier| identifier == word)
}

/// Lines of `dir`'s sources outside tests (`#[cfg(test)]` modules, `tests.rs` files) that mention any
/// of `forbidden`.
fn mentions(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        // Tests may use what the code may not (a simulator, a clock for a benchmark).
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (number, line) in code.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                continue;
            }
            for word in forbidden {
                if mentions_word(line, word) {
                    found.push(format!("{}:{}: {word}: {}", path.display(), number + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn the_abr_does_no_io_and_reads_no_clock() {
    let forbidden = [
        "Instant",
        "SystemTime",
        "tokio::",
        "std::fs",
        "std::net",
        "std::io",
        "reqwest",
        "gstreamer",
        "crate::session",
        "crate::fetch",
        "crate::pipeline",
    ];
    let found = mentions("player/src/abr", &forbidden);
    assert!(found.is_empty(), "abr/ must stay pure:\n{}", found.join("\n"));
}

#[test]
fn the_download_loop_names_neither_http_nor_gstreamer() {
    // Only `seams.rs` (the traits and their real implementations) and `mod.rs` (which plugs the real
    // ones in) may.
    let forbidden = ["reqwest::", "gstreamer::", "gst::", "Fetcher", "Pipeline"];
    let found: Vec<String> = mentions("player/src/session", &forbidden)
        .into_iter()
        .filter(|line| !line.contains("session/seams.rs") && !line.contains("session/mod.rs"))
        .collect();
    assert!(found.is_empty(), "the download loop must go through the seams:\n{}", found.join("\n"));
}

/// The packages `crate` depends on (normal and build dependencies), from `cargo tree`.
fn dependency_tree(krate: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root())
        .args(["tree", "--offline", "-p", krate, "-e", "normal,build", "--prefix", "none"])
        .output()
        .unwrap_or_else(|e| panic!("running cargo tree: {e}"));
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_edge_never_depends_on_gstreamer() {
    let tree = dependency_tree("eddy-edge");
    let gstreamer: Vec<&str> = tree.lines().filter(|l| l.starts_with("gstreamer") || l.starts_with("glib")).collect();
    assert!(gstreamer.is_empty(), "eddy-edge pulls in GStreamer: {gstreamer:?}");
    assert!(tree.lines().any(|l| l.starts_with("eddy-shared")), "the check reads the real tree");
}
