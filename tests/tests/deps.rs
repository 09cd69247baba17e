//! Does `scripts/install-deps.sh` install everything? Checked on this machine, where everything is
//! installed, so that the next missing package is caught here rather than on a fresh machine.
//!
//! For every GStreamer element the code uses (the lists come from the crates and the tests' own
//! module, never from a copy here), `gst-inspect-1.0` gives the plugin file and `dpkg` the package
//! that owns it. The same for every command the scripts and tests run, every pkg-config module the
//! build links, and the C runtime. Each owner must be guaranteed by the install script: named in its
//! list, or reached from a named package through Depends/Pre-Depends (never Recommends, which the
//! script does not install; of an `a | b` choice only `a` counts, since that is what apt picks on a
//! fresh machine), or Essential (on every Debian system). The preflight table in
//! `eddy_shared::gst_elements` must agree with what `gst-inspect-1.0` and `dpkg` say.
//!
//! Needs Debian or Ubuntu with `bash scripts/install-deps.sh` already run (`scripts/test.sh` does).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};

mod gst_tools;

// ---------------------------------------------------------------------------------------------
// What the code uses

/// Every GStreamer element the code uses, with who uses it.
fn elements() -> BTreeMap<&'static str, Vec<&'static str>> {
    let lists: [(&[&'static str], &'static str); 5] = [
        (eddy_packager::pipeline::REQUIRED_ELEMENTS, "eddy-package"),
        (eddy_player::pipeline::REQUIRED_ELEMENTS, "eddy-play"),
        (eddy_player::pipeline::DECODERS, "eddy-play (found by decodebin)"),
        (gst_tools::TEST_ELEMENTS, "the tests' gst-launch-1.0 pipelines"),
        (gst_tools::PLAYBIN_PICKS, "the tests' playbin (found by itself)"),
    ];
    let mut elements: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (list, user) in lists {
        for element in list {
            elements.entry(element).or_default().push(user);
        }
    }
    elements
}

/// Commands that reading the scripts and the Rust code cannot see: what the build runs, what runs
/// behind a wrapper (`pin CORE wrk ...`, `taskset -c N wrk ...`), and what the README shows.
const UNSEEN_COMMANDS: &[(&str, &str)] = &[
    ("cc", "cargo build (the linker; openssl-sys's build script)"),
    ("pkg-config", "cargo build (the -sys crates)"),
    ("wrk", "bench/run.sh (through pin)"),
    ("curl", "README examples"),
];

/// Commands not checked: the Rust toolchain (installed with rustup, not apt) and apt-get, which
/// installs everything else and comes with every Debian and Ubuntu.
const NOT_CHECKED: &[&str] = &["cargo", "rustc", "rustup", "apt-get"];

/// The `-sys` crates in Cargo.lock and the pkg-config module each one links (None: nothing on Linux).
const SYS_CRATES: &[(&str, Option<&str>)] = &[
    ("glib-sys", Some("glib-2.0")),
    ("gobject-sys", Some("gobject-2.0")),
    ("gio-sys", Some("gio-2.0")),
    ("gstreamer-sys", Some("gstreamer-1.0")),
    ("gstreamer-base-sys", Some("gstreamer-base-1.0")),
    ("gstreamer-app-sys", Some("gstreamer-app-1.0")),
    ("gstreamer-audio-sys", Some("gstreamer-audio-1.0")),
    ("gstreamer-video-sys", Some("gstreamer-video-1.0")),
    ("gstreamer-pbutils-sys", Some("gstreamer-pbutils-1.0")),
    ("openssl-sys", Some("openssl")),
    // macOS, WebAssembly and Windows only, or no C library at all.
    ("core-foundation-sys", None),
    ("security-framework-sys", None),
    ("js-sys", None),
    ("web-sys", None),
    ("windows-sys", None),
    ("linux-raw-sys", None),
    // sqlx's "sqlite" feature builds SQLite from source ("bundled"): gcc, nothing from pkg-config.
    ("libsqlite3-sys", None),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

// ---------------------------------------------------------------------------------------------
// What the install script guarantees

/// The packages `scripts/install-deps.sh --list` prints.
fn listed_packages() -> Result<Vec<String>> {
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/install-deps.sh"))
        .arg("--list")
        .output()
        .context("running scripts/install-deps.sh --list")?;
    ensure!(output.status.success(), "scripts/install-deps.sh --list failed: {}", output.status);
    let packages: Vec<String> = String::from_utf8_lossy(&output.stdout).split_whitespace().map(String::from).collect();
    ensure!(!packages.is_empty(), "scripts/install-deps.sh --list printed nothing");
    Ok(packages)
}

/// An installed package, as dpkg knows it.
#[derive(Debug, Default)]
struct Installed {
    essential: bool,
    /// Depends and Pre-Depends: each group is `a | b | ...`, the names without versions or arch.
    depends: Vec<Vec<String>>,
    recommends: Vec<String>,
}

/// Why a package is guaranteed by the install script.
#[derive(Debug, Clone)]
enum Reason {
    Listed,
    Essential,
    DependencyOf(String),
}

struct Machine {
    listed: Vec<String>,
    installed: HashMap<String, Installed>,
    guaranteed: HashMap<String, Reason>,
}

/// `libfoo:amd64 (>= 1.2)` → `libfoo`.
fn package_name(text: &str) -> String {
    let name = text.split_whitespace().next().unwrap_or("");
    name.split(':').next().unwrap_or(name).to_string()
}

fn dependency_groups(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|group| group.split('|').map(package_name).filter(|n| !n.is_empty()).collect::<Vec<_>>())
        .filter(|group| !group.is_empty())
        .collect()
}

impl Machine {
    fn read() -> Result<Self> {
        let listed = listed_packages()?;
        let output = Command::new("dpkg-query")
            .args(["-W", "-f"])
            .arg(concat!(
                "${db:Status-Abbrev}\t${Package}\t${Essential}\t${Pre-Depends}\t${Depends}\t${Recommends}",
                "\t${Provides}\n"
            ))
            .output()
            .context("running dpkg-query: this check needs Debian or Ubuntu")?;
        ensure!(output.status.success(), "dpkg-query -W failed");
        let mut installed: HashMap<String, Installed> = HashMap::new();
        let mut providers: HashMap<String, Vec<String>> = HashMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            let [status, name, essential, pre_depends, depends, recommends, provides] = fields[..] else {
                continue;
            };
            if !status.starts_with("ii") {
                continue;
            }
            let entry = installed.entry(name.to_string()).or_default();
            entry.essential |= essential == "yes";
            entry.depends.extend(dependency_groups(pre_depends));
            entry.depends.extend(dependency_groups(depends));
            entry.recommends.extend(dependency_groups(recommends).into_iter().flatten());
            for virtual_name in dependency_groups(provides).into_iter().flatten() {
                providers.entry(virtual_name).or_default().push(name.to_string());
            }
        }
        let not_installed: Vec<&String> = listed.iter().filter(|p| !installed.contains_key(*p)).collect();
        ensure!(
            not_installed.is_empty(),
            "scripts/install-deps.sh lists packages that are not installed: {not_installed:?}; \
             run bash scripts/install-deps.sh first"
        );

        // Breadth first from the listed and the Essential packages, along the first alternative of
        // each Depends group (a virtual name counts through the installed packages providing it).
        let mut guaranteed: HashMap<String, Reason> = HashMap::new();
        let mut queue = VecDeque::new();
        for package in &listed {
            guaranteed.insert(package.clone(), Reason::Listed);
            queue.push_back(package.clone());
        }
        for (package, entry) in &installed {
            if entry.essential && !guaranteed.contains_key(package) {
                guaranteed.insert(package.clone(), Reason::Essential);
                queue.push_back(package.clone());
            }
        }
        while let Some(package) = queue.pop_front() {
            let Some(entry) = installed.get(&package) else { continue };
            for group in &entry.depends {
                let Some(first) = group.first() else { continue };
                let mut reached = Vec::new();
                if installed.contains_key(first) {
                    reached.push(first.clone());
                }
                reached.extend(providers.get(first).into_iter().flatten().cloned());
                for next in reached {
                    if !guaranteed.contains_key(&next) {
                        guaranteed.insert(next.clone(), Reason::DependencyOf(package.clone()));
                        queue.push_back(next);
                    }
                }
            }
        }
        Ok(Self { listed, installed, guaranteed })
    }

    fn get() -> Result<&'static Machine> {
        static MACHINE: OnceLock<Result<Machine, String>> = OnceLock::new();
        MACHINE
            .get_or_init(|| Machine::read().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// None when one of `owners` is guaranteed; otherwise what is wrong, for the message.
    fn problem(&self, owners: &[String]) -> Option<String> {
        if owners.iter().any(|o| self.guaranteed.contains_key(o)) {
            return None;
        }
        let names = owners.join(", ");
        let recommended_by: Vec<&str> = self
            .guaranteed
            .keys()
            .filter(|p| self.installed.get(*p).is_some_and(|e| e.recommends.iter().any(|r| owners.contains(r))))
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let why = if recommended_by.is_empty() {
            String::from("which scripts/install-deps.sh neither lists nor reaches through Depends")
        } else {
            format!(
                "which scripts/install-deps.sh neither lists nor reaches through Depends (only a Recommends of {}, \
                 and it installs without recommends)",
                recommended_by.join(", ")
            )
        };
        Some(format!(
            "in Debian package {names}, {why}: add {} to packages=(...) in scripts/install-deps.sh",
            owners.first().map_or("it", String::as_str)
        ))
    }

    /// How `package` is guaranteed, as a chain back to the install script's list.
    fn chain(&self, package: &str) -> String {
        let mut chain = vec![package.to_string()];
        let mut current = package.to_string();
        while let Some(Reason::DependencyOf(parent)) = self.guaranteed.get(&current) {
            if chain.len() > 50 {
                break;
            }
            chain.push(parent.clone());
            current = parent.clone();
        }
        match self.guaranteed.get(&current) {
            Some(Reason::Essential) => format!("{} (Essential)", chain.join(" ← ")),
            Some(Reason::Listed) => format!("{} (listed)", chain.join(" ← ")),
            _ => chain.join(" ← "),
        }
    }
}

/// Paths under which dpkg may have recorded `path`: itself, with its folders resolved (/lib →
/// /usr/lib), fully resolved (alternatives: /usr/bin/awk → /usr/bin/mawk), and with or without the
/// /usr prefix (usrmerge: procps ships /bin/kill, found as /usr/bin/kill).
fn candidates(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        if let Ok(parent) = parent.canonicalize() {
            out.push(parent.join(name));
        }
    }
    if let Ok(resolved) = path.canonicalize() {
        out.push(resolved);
    }
    for p in out.clone() {
        match p.strip_prefix("/usr") {
            Ok(rest) => out.push(Path::new("/").join(rest)),
            Err(_) => out.push(Path::new("/usr").join(p.strip_prefix("/").unwrap_or(&p))),
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    out
}

/// The packages that own each path, by `dpkg-query -S`, trying each path's [`candidates`] in order.
fn owners(paths: &[PathBuf]) -> Result<HashMap<PathBuf, Vec<String>>> {
    let all: Vec<Vec<PathBuf>> = paths.iter().map(|p| candidates(p)).collect();
    let queried: BTreeSet<&PathBuf> = all.iter().flatten().collect();
    if queried.is_empty() {
        return Ok(HashMap::new());
    }
    // Exits 1 when some path has no owner; the others are still printed.
    let output = Command::new("dpkg-query").arg("-S").args(&queried).output().context("running dpkg-query -S")?;
    let mut found: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if line.starts_with("diversion ") {
            continue;
        }
        let Some((packages, path)) = line.rsplit_once(": ") else { continue };
        found.entry(PathBuf::from(path)).or_default().extend(packages.split(',').map(package_name));
    }
    let mut result = HashMap::new();
    for (path, tries) in paths.iter().zip(all) {
        if let Some(packages) = tries.iter().find_map(|p| found.get(p)) {
            let mut packages = packages.clone();
            packages.sort();
            packages.dedup();
            result.insert(path.clone(), packages);
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// GStreamer elements

struct Inspected {
    plugin: String,
    file: PathBuf,
}

/// `gst-inspect-1.0 ELEMENT` for each element (in parallel): its plugin's name and file, or None when
/// GStreamer has no such element.
fn inspect(elements: &[&str]) -> Result<HashMap<String, Option<Inspected>>> {
    let results: Vec<Result<(String, Option<Inspected>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = elements
            .iter()
            .map(|element| {
                scope.spawn(move || -> Result<(String, Option<Inspected>)> {
                    let output = Command::new("gst-inspect-1.0")
                        .arg(element)
                        .output()
                        .context("running gst-inspect-1.0 (gstreamer1.0-tools)")?;
                    if !output.status.success() {
                        return Ok((element.to_string(), None));
                    }
                    let text = String::from_utf8_lossy(&output.stdout);
                    let field = |key: &str| {
                        text.lines().find_map(|line| {
                            let rest = line.trim_start().strip_prefix(key)?;
                            rest.starts_with(char::is_whitespace).then(|| rest.trim().to_string())
                        })
                    };
                    let plugin = field("Name").with_context(|| format!("no plugin Name for {element}"))?;
                    let file = field("Filename").with_context(|| format!("no plugin Filename for {element}"))?;
                    Ok((element.to_string(), Some(Inspected { plugin, file: PathBuf::from(file) })))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("gst-inspect thread panicked"))))
            .collect()
    });
    results.into_iter().collect()
}

#[test]
fn every_gstreamer_element_comes_from_a_package_the_install_script_guarantees() -> Result<()> {
    let machine = Machine::get()?;
    let elements = elements();
    let names: Vec<&str> = elements.keys().copied().collect();
    let inspected = inspect(&names)?;
    let files: Vec<PathBuf> = inspected.values().flatten().map(|i| i.file.clone()).collect();
    let owners = owners(&files)?;
    let mut problems = Vec::new();
    for (element, users) in &elements {
        let users = users.join(", ");
        let table = eddy_shared::gst_elements::source_of(element);
        let Some(Some(found)) = inspected.get(*element) else {
            let hint = table.map_or(String::new(), |t| format!(" (the preflight table says {})", t.package));
            problems.push(format!(
                "GStreamer element '{element}' (used by {users}) is not installed: gst-inspect-1.0 finds no such \
                 element{hint}; run bash scripts/install-deps.sh, and name its package there if that does not \
                 install it"
            ));
            continue;
        };
        let Some(packages) = owners.get(&found.file) else {
            problems.push(format!(
                "GStreamer element '{element}' (used by {users}): its plugin file {} belongs to no Debian package",
                found.file.display()
            ));
            continue;
        };
        if let Some(problem) = machine.problem(packages) {
            problems.push(format!(
                "GStreamer element '{element}' (used by {users}; plugin '{}', {}) is {problem}",
                found.plugin,
                found.file.display()
            ));
        }
    }
    ensure!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

#[test]
fn the_preflight_table_agrees_with_gst_inspect_and_dpkg() -> Result<()> {
    let elements = elements();
    let names: Vec<&str> = elements.keys().copied().collect();
    let inspected = inspect(&names)?;
    let files: Vec<PathBuf> = inspected.values().flatten().map(|i| i.file.clone()).collect();
    let owners = owners(&files)?;
    let mut problems = Vec::new();
    for element in &names {
        let Some(row) = eddy_shared::gst_elements::source_of(element) else {
            problems.push(format!("'{element}' has no row in eddy_shared::gst_elements::ELEMENT_SOURCES"));
            continue;
        };
        let Some(Some(found)) = inspected.get(*element) else {
            problems.push(format!("'{element}' is not installed, so its row cannot be checked"));
            continue;
        };
        if row.plugin != found.plugin {
            problems.push(format!(
                "'{element}': the table says plugin '{}', gst-inspect-1.0 says '{}'",
                row.plugin, found.plugin
            ));
        }
        let packages = owners.get(&found.file).cloned().unwrap_or_default();
        if !packages.iter().any(|p| p == row.package) {
            problems.push(format!(
                "'{element}': the table says package {}, dpkg says {} owns {}",
                row.package,
                if packages.is_empty() { "nothing".to_string() } else { packages.join(", ") },
                found.file.display()
            ));
        }
    }
    for row in eddy_shared::gst_elements::ELEMENT_SOURCES {
        if !elements.contains_key(row.element) {
            problems.push(format!("the table has a row for '{}', which no list in the code uses", row.element));
        }
    }
    ensure!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Commands

const BASH_WORDS: &[&str] = &[
    // keywords
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "case",
    "esac",
    "for",
    "select",
    "while",
    "until",
    "do",
    "done",
    "in",
    "function",
    "time",
    "coproc", // builtins
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "cd",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "echo",
    "enable",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "getopts",
    "hash",
    "help",
    "history",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "wait",
];

/// A bash script with its heredoc bodies dropped.
fn without_heredocs(text: &str) -> String {
    let mut out = String::new();
    let mut delimiter: Option<String> = None;
    for line in text.lines() {
        if let Some(end) = &delimiter {
            if line.trim() == end {
                delimiter = None;
            }
            out.push('\n');
            continue;
        }
        // `<<WORD`, `<<-WORD`, `<<'WORD'`, but not the here-string `<<<`.
        let mut rest = line;
        while let Some(at) = rest.find("<<") {
            let after = &rest[at + 2..];
            if after.starts_with('<') {
                rest = after.trim_start_matches('<');
                continue;
            }
            let word: String = after
                .trim_start_matches('-')
                .trim_start()
                .trim_start_matches(['\'', '"'])
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() {
                delimiter = Some(word);
            }
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The script's code with quoted text and `(( ))` arithmetic replaced by a placeholder word `Q`,
/// comments dropped, line continuations joined, and no command separators left inside `[[ ]]`
/// tests. Command substitutions `$( )` stay code wherever they are (in double quotes, arithmetic).
fn code_only(text: &str) -> String {
    enum Open {
        Double,
        /// `$( ... )`, with the depth of plain parentheses inside it.
        Substitution(usize),
        /// `(( ... ))` or `$(( ... ))`, with the depth of parentheses inside it.
        Arithmetic(usize),
        /// `[[ ... ]]`.
        Test,
    }
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    let mut out = String::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut i = 0;
    while let Some(c) = at(i) {
        let next = at(i + 1);
        let substitution = c == '$' && next == Some('(') && at(i + 2) != Some('(');
        let arithmetic = (c == '$' && next == Some('(') && at(i + 2) == Some('(')) || (c == '(' && next == Some('('));
        match stack.last_mut() {
            Some(Open::Double) => {
                if c == '\\' {
                    i += 2;
                } else if c == '"' {
                    out.push_str(" Q ");
                    stack.pop();
                    i += 1;
                } else if substitution {
                    stack.push(Open::Substitution(0));
                    out.push_str("$(");
                    i += 2;
                } else if arithmetic {
                    stack.push(Open::Arithmetic(0));
                    i += 3;
                } else {
                    i += 1;
                }
                continue;
            }
            // Arithmetic is dropped, except the command substitutions in it.
            Some(Open::Arithmetic(depth)) if !substitution => {
                match c {
                    '(' => *depth += 1,
                    ')' if *depth == 0 => {
                        stack.pop();
                        i += 1; // the second ')'
                    }
                    ')' => *depth -= 1,
                    _ => {}
                }
                i += 1;
                continue;
            }
            Some(Open::Test) if c == ']' && next == Some(']') => {
                stack.pop();
                out.push(' ');
                i += 2;
                continue;
            }
            Some(Open::Test) if c == '|' || c == '&' => {
                out.push(' ');
                i += 1;
                continue;
            }
            _ => {}
        }
        match c {
            '\\' if next == Some('\n') => {
                out.push(' ');
                i += 2;
            }
            '\\' => {
                out.push('Q');
                i += 2;
            }
            '\'' => {
                let end = chars[i + 1..].iter().position(|&c| c == '\'').map_or(chars.len(), |p| i + p + 2);
                out.push_str(" Q ");
                i = end;
            }
            '"' => {
                stack.push(Open::Double);
                i += 1;
            }
            '#' if i == 0 || chars[i - 1].is_whitespace() || chars[i - 1] == ';' => {
                while at(i).is_some_and(|c| c != '\n') {
                    i += 1;
                }
            }
            _ if arithmetic => {
                stack.push(Open::Arithmetic(0));
                // `$((...))` is part of a word; a bare `((...))` is a command of its own.
                out.push_str(if c == '$' { "Q" } else { " Q " });
                i += if c == '$' { 3 } else { 2 };
            }
            _ if substitution => {
                stack.push(Open::Substitution(0));
                out.push_str("$(");
                i += 2;
            }
            '[' if next == Some('[') => {
                stack.push(Open::Test);
                out.push(' ');
                i += 2;
            }
            '(' => {
                if let Some(Open::Substitution(depth)) = stack.last_mut() {
                    *depth += 1;
                }
                out.push('(');
                i += 1;
            }
            ')' => {
                match stack.last_mut() {
                    Some(Open::Substitution(0)) => {
                        stack.pop();
                    }
                    Some(Open::Substitution(depth)) => *depth -= 1,
                    _ => {}
                }
                out.push(')');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Function names a script defines (`name() {`).
fn functions(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches("function ").trim_start();
            let (name, rest) = line.split_once("()")?;
            (rest.trim_start().starts_with('{') && !name.is_empty() && !name.contains(char::is_whitespace))
                .then(|| name.to_string())
        })
        .collect()
}

/// The external commands a bash script runs, as far as a light reading of its text can tell: the
/// first word of each simple command, past variable assignments, `!` and `if`-like keywords, and the
/// X of `command -v X`. Array literals, case patterns, loops' word lists and the script's own
/// functions are not commands; neither is what runs behind a quoted prefix (`"${sudo[@]}" apt-get`).
fn script_commands(text: &str) -> BTreeSet<String> {
    let code = code_only(&without_heredocs(text));
    let mut commands = BTreeSet::new();
    let (mut in_array, mut pattern_pending, mut previous) = (false, false, '\n');
    let mut segment = String::new();
    for c in code.chars().chain(std::iter::once('\n')) {
        if !matches!(c, '\n' | ';' | '&' | '|' | '(' | ')' | '{' | '}' | '`') {
            segment.push(c);
            continue;
        }
        let text = std::mem::take(&mut segment);
        let all: Vec<&str> = text.split_whitespace().collect();
        let mut words = &all[..];
        let delimiter_before = previous;
        previous = c;
        if in_array {
            in_array = c != ')';
            continue;
        }
        if pattern_pending && !words.is_empty() && words[0] != "esac" {
            // `pattern)` or `a|b)` after `case ... in` or `;;`
            if c == ')' || c == '|' {
                pattern_pending = c == '|';
                continue;
            }
        }
        if words.is_empty() {
            if c == ';' && delimiter_before == ';' {
                pattern_pending = true; // after `;;`
            }
            continue;
        }
        if c == '(' && words.last().is_some_and(|w| w.ends_with('=')) {
            in_array = true; // name=( ... )
            continue;
        }
        while let Some((first, rest)) = words.split_first() {
            let assignment = first.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty() && name.chars().all(|ch| ch.is_ascii_alphanumeric() || "_[]+".contains(ch))
            });
            let prefix =
                matches!(*first, "!" | "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "time" | "exec");
            if assignment || prefix {
                words = rest;
            } else {
                break;
            }
        }
        match words.first().copied() {
            Some("case") => pattern_pending = true,
            Some("esac") => pattern_pending = false,
            Some("command") => {
                // `command X` and `command -v X`: the script needs X.
                if let Some(word) = words.iter().skip(1).find(|w| !w.starts_with('-')).filter(|w| is_command_name(w)) {
                    commands.insert(word.to_string());
                }
            }
            Some(word) if is_command_name(word) => {
                commands.insert(word.to_string());
            }
            _ => {}
        }
    }
    for function in functions(&code) {
        commands.remove(&function);
    }
    commands
}

/// A literal command name (`redis-server`, `gst-launch-1.0`), not a keyword, builtin, path or variable.
fn is_command_name(word: &str) -> bool {
    word.starts_with(|ch: char| ch.is_ascii_lowercase())
        && word.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._+-".contains(ch))
        && !BASH_WORDS.contains(&word)
}

/// The names that a Rust file passes to `Command::new` as string literals.
fn rust_commands(text: &str) -> BTreeSet<String> {
    text.match_indices("Command::new(\"")
        .filter_map(|(at, found)| {
            let rest = &text[at + found.len()..];
            rest.split_once('"').map(|(name, _)| name.to_string())
        })
        .collect()
}

fn files_under(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target" && !n.to_string_lossy().starts_with('.')) {
                files_under(&path, extension, out)?;
            }
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
    Ok(())
}

/// Every external command the scripts (scripts/, bench/) and the Rust code run, with where.
fn commands() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let root = repo_root();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut scripts = Vec::new();
    for dir in ["scripts", "bench"] {
        files_under(&root.join(dir), "sh", &mut scripts)?;
    }
    // Functions defined in one script (bench/common.sh) are called from others.
    let texts: Vec<(PathBuf, String)> =
        scripts.into_iter().map(|p| std::fs::read_to_string(&p).map(|t| (p, t))).collect::<Result<_, _>>()?;
    let shared_functions: HashSet<String> =
        texts.iter().flat_map(|(_, t)| functions(&code_only(&without_heredocs(t)))).collect();
    for (path, text) in &texts {
        let shown = path.strip_prefix(&root).unwrap_or(path).display().to_string();
        for command in script_commands(text).into_iter().filter(|c| !shared_functions.contains(c)) {
            used.entry(command).or_default().insert(shown.clone());
        }
        used.entry("bash".into()).or_default().insert(shown.clone());
    }
    let mut rust = Vec::new();
    for dir in ["edge", "shared", "player", "packager", "netsim", "tests"] {
        files_under(&root.join(dir), "rs", &mut rust)?;
    }
    for path in rust {
        let shown = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
        for command in rust_commands(&std::fs::read_to_string(&path)?) {
            used.entry(command).or_default().insert(shown.clone());
        }
    }
    for (command, user) in UNSEEN_COMMANDS {
        used.entry(command.to_string()).or_default().insert(user.to_string());
    }
    for command in NOT_CHECKED {
        used.remove(*command);
    }
    Ok(used)
}

#[test]
fn reading_the_scripts_finds_the_commands_they_run() -> Result<()> {
    let script = r#"
set -euo pipefail
log() { printf '%s\n' "$*" >&2; }
missing=(
  nginx wrk
)
X=1 redis-server --port "$P" >"$d/log" 2>&1 &
out=$(curl -sf "http://$a/stats" | python3 -c 'import json; print(1)')
"${sudo[@]}" apt-get update -qq
"${TOOLS[@]}" belady "$f"
total=$((total + $(stat -c %s f))); if ((total > 3)); then :; fi
if ! command -v jq >/dev/null; then log "no jq"; fi
case $mode in
  off) printf 'x' ;;
  on|redis) awk '{print}' <<<"$x" ;;
esac
python3 - "$f" <<'PY'
import sys
print(sys.argv)
PY
until [[ $(date +%s) -gt 3 ]]; do sleep 0.1; done
echo "$((total + $(wc -l <f)))" # a comment: sed
for w in a b; do taskset -c 1 true; done
"#;
    let found: Vec<String> = script_commands(script).into_iter().collect();
    let expected = ["awk", "curl", "date", "jq", "python3", "redis-server", "sleep", "stat", "taskset", "wc"];
    ensure!(found == expected, "found {found:?}, expected {expected:?}");
    // Written with \u{22} for the quotes, so that reading this file does not find these two.
    let rust =
        rust_commands("let c = Command::new(\u{22}ffprobe\u{22}).arg(); std::process::Command::new(\u{22}kill\u{22});");
    ensure!(rust.into_iter().collect::<Vec<_>>() == ["ffprobe", "kill"], "Command::new literals");
    Ok(())
}

#[test]
fn every_command_the_scripts_and_tests_run_comes_from_a_package_the_install_script_guarantees() -> Result<()> {
    let machine = Machine::get()?;
    let commands = commands()?;
    for expected in ["nginx", "redis-server", "python3", "ffprobe", "gst-launch-1.0", "openssl", "kill"] {
        ensure!(
            commands.contains_key(expected),
            "reading the scripts and tests did not find '{expected}': {commands:?}"
        );
    }
    let mut paths: BTreeMap<&str, Vec<PathBuf>> = BTreeMap::new();
    for command in commands.keys() {
        let found: Vec<PathBuf> = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
            .iter()
            .map(|dir| Path::new(dir).join(command))
            .filter(|p| p.exists())
            .collect();
        paths.insert(command, found);
    }
    let all: Vec<PathBuf> = paths.values().flatten().cloned().collect();
    let owners = owners(&all)?;
    let mut problems = Vec::new();
    for (command, users) in &commands {
        let users = users.iter().cloned().collect::<Vec<_>>().join(", ");
        let found = &paths[command.as_str()];
        let owned: Vec<String> = found.iter().filter_map(|p| owners.get(p)).flatten().cloned().collect();
        if found.is_empty() {
            problems.push(format!(
                "command '{command}' (used by {users}) is not installed in /usr/bin, /usr/sbin, /bin or /sbin: \
                 name the Debian package that provides it in scripts/install-deps.sh"
            ));
        } else if owned.is_empty() {
            problems.push(format!(
                "command '{command}' (used by {users}): {} belongs to no Debian package",
                found[0].display()
            ));
        } else if let Some(problem) = machine.problem(&owned) {
            problems.push(format!("command '{command}' (used by {users}; {}) is {problem}", found[0].display()));
        }
    }
    ensure!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The build

#[test]
fn the_build_finds_its_system_libraries_in_packages_the_install_script_guarantees() -> Result<()> {
    let machine = Machine::get()?;
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).context("reading Cargo.lock")?;
    let sys_crates: BTreeSet<&str> = lock
        .lines()
        .filter_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"'))
        .filter(|name| name.ends_with("-sys"))
        .collect();
    let mut problems = Vec::new();
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for krate in &sys_crates {
        match SYS_CRATES.iter().find(|(name, _)| name == krate) {
            None => problems.push(format!(
                "Cargo.lock has {krate}, which SYS_CRATES in tests/tests/deps.rs does not map to a pkg-config \
                 module (or to none)"
            )),
            Some((_, None)) => {}
            Some((_, Some(module))) => {
                let output = Command::new("pkg-config")
                    .args(["--variable=pcfiledir", module])
                    .output()
                    .context("running pkg-config")?;
                let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
                if !output.status.success() || dir.is_empty() {
                    problems.push(format!(
                        "pkg-config module {module} (for {krate}) is not installed: name its -dev package in \
                         scripts/install-deps.sh"
                    ));
                } else {
                    files.push((
                        format!("pkg-config module {module} (for {krate})"),
                        Path::new(&dir).join(format!("{module}.pc")),
                    ));
                }
            }
        }
    }
    // The C runtime the linker needs (libc6-dev is only a Recommends of gcc).
    let output = Command::new("cc").arg("-print-file-name=crt1.o").output().context("running cc")?;
    let crt = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if crt.is_absolute() {
        files.push(("the C runtime crt1.o (for linking)".into(), crt));
    } else {
        problems.push("cc cannot find crt1.o: install libc6-dev (name it in scripts/install-deps.sh)".into());
    }
    let paths: Vec<PathBuf> = files.iter().map(|(_, p)| p.clone()).collect();
    let owners = owners(&paths)?;
    for (what, path) in &files {
        match owners.get(path) {
            None => problems.push(format!("{what}: {} belongs to no Debian package", path.display())),
            Some(packages) => {
                if let Some(problem) = machine.problem(packages) {
                    problems.push(format!("{what} ({}) is {problem}", path.display()));
                }
            }
        }
    }
    ensure!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

#[test]
fn the_install_script_lists_only_real_installed_packages() -> Result<()> {
    let machine = Machine::get()?;
    let mut listed = machine.listed.clone();
    listed.sort();
    listed.dedup();
    ensure!(listed.len() == machine.listed.len(), "scripts/install-deps.sh names a package twice");
    // A sample of how things are reached, so a failure elsewhere can be read against it.
    for package in ["gstreamer1.0-x", "libc6"] {
        if machine.guaranteed.contains_key(package) {
            eprintln!("{}", machine.chain(package));
        } else {
            bail!("{package} is not guaranteed by scripts/install-deps.sh");
        }
    }
    Ok(())
}
