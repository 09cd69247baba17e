//! Eddy's edge cache. See ARCHITECTURE.md for the map; in short, a request flows through `phases`
//! (in the order `phases::handle` runs them), sharing the app state in `state`; the cache lives in
//! `cache` (keys, policy, storage, coalescing), origins in `origin`, rate-limit decisions in `ratelimit`,
//! counters in `metrics` (a leaf), the listeners in `server` and `admin`, viewers' TLS in `tls`, and what
//! SIGHUP does in `reload`.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod forwarding;
pub mod identity;
pub mod metrics;
pub mod origin;
pub mod phases;
pub mod prefetch;
pub mod ratelimit;
pub mod reload;
pub mod request_body;
pub mod server;
pub mod signed_urls;
pub mod state;
pub mod stats_cmd;
pub mod tls;
pub mod upstream;

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

    /// The crate's top-level modules and the ones each imports (outside tests and comments).
    fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut graph = std::collections::BTreeMap::new();
        let mut stack = vec![src()];
        while let Some(dir) = stack.pop() {
            for path in std::fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path()) {
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let relative = path.strip_prefix(src()).unwrap_or(&path);
                let Some(first) = relative.components().next() else { continue };
                let module = first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let imports: &mut std::collections::BTreeSet<String> = graph.entry(module.clone()).or_default();
                for line in code.lines().map(str::trim).filter(|l| !l.starts_with("//")) {
                    for (_, rest) in line.match_indices("crate::").map(|(i, _)| ((), &line[i + 7..])) {
                        let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                        if !name.is_empty() && name != module {
                            imports.insert(name);
                        }
                    }
                }
            }
        }
        graph
    }

    #[test]
    fn the_modules_import_each_other_in_one_direction_only() {
        let graph = module_graph();
        assert!(graph.len() >= 10, "the graph reads the real sources: {graph:?}");
        // A cycle exists exactly when some module reaches itself.
        for start in graph.keys() {
            let mut seen = std::collections::BTreeSet::new();
            let mut stack: Vec<&String> = graph[start].iter().collect();
            while let Some(next) = stack.pop() {
                assert!(next != start, "{start} reaches itself through its imports: {graph:#?}");
                if seen.insert(next.clone()) {
                    stack.extend(graph.get(next).into_iter().flatten());
                }
            }
        }
    }
}
