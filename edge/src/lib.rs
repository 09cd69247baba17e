//! Eddy's edge cache. See ARCHITECTURE.md for the map; in short, a request flows through `phases`
//! (in the order `phases::handle` runs them), sharing the app state in `state`; the cache lives in
//! `cache` (keys, policy, storage, coalescing), origins in `origin`, rate-limit decisions in `ratelimit`,
//! counters in `metrics` (a leaf), and the listeners in `server` and `admin`.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod origin;
pub mod phases;
pub mod ratelimit;
pub mod request_body;
pub mod server;
pub mod state;
pub mod stats_cmd;

/// The module boundaries ARCHITECTURE.md states, read from the sources, so that a `use` that breaks one
/// fails here rather than waiting for a reviewer to notice.
#[cfg(test)]
mod boundaries {
    use std::path::{Path, PathBuf};

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// `<name>.rs` and the `.rs` files of the folder `<name>/` (its submodules).
    fn module_files(name: &str) -> Vec<PathBuf> {
        let mut files = vec![src().join(format!("{name}.rs"))];
        if let Ok(entries) = std::fs::read_dir(src().join(name)) {
            files.extend(
                entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "rs")),
            );
        }
        files.retain(|f| f.exists());
        files.sort();
        files
    }

    /// The lines of `files` outside comments that name a `crate::` path starting with one of `prefixes`.
    fn naming(files: &[PathBuf], prefixes: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for line in text.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
                if prefixes.iter().any(|p| line.contains(p)) {
                    found.push(format!("{}: {line}", file.display()));
                }
            }
        }
        found
    }

    #[test]
    fn metrics_is_a_leaf() {
        let files = module_files("metrics");
        assert!(files.len() >= 2, "metrics.rs and metrics/top.rs: {files:?}");
        let found = naming(&files, &["crate::"]);
        assert!(found.is_empty(), "metrics imports from the crate:\n{}", found.join("\n"));
    }

    #[test]
    fn ratelimit_decides_and_never_imports_the_request_path() {
        let files = module_files("ratelimit");
        assert!(files.len() >= 5, "{files:?}");
        let request_path =
            ["crate::phases", "crate::state", "crate::access_log", "crate::identity", "crate::server", "crate::admin"];
        let found = naming(&files, &request_path);
        assert!(found.is_empty(), "ratelimit imports the request path:\n{}", found.join("\n"));
    }
}
