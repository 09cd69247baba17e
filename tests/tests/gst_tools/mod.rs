//! The GStreamer the tests use themselves, in one place: the elements of their own `gst-launch-1.0`
//! pipelines (only through [`gst_launch`], which refuses an element missing from the list), what
//! playbin finds by itself to play a package, and a plugin registry with one plugin left out (to
//! see the binaries' preflight answer). `tests/tests/deps.rs` checks that `scripts/install-deps.sh`
//! installs the package of every element listed here.
#![allow(dead_code)] // each test binary that includes this module uses a different part of it

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// Every element the tests' `gst-launch-1.0` pipelines name.
pub const TEST_ELEMENTS: &[&str] = &[
    // Playing a package to the end (packager tests).
    "playbin",
    "fakesink",
    // Making input files for the packager (an MP4 with H.264 and AAC; an audio-only Ogg).
    "videotestsrc",
    "audiotestsrc",
    "audioconvert",
    "x264enc",
    "h264parse",
    "avenc_aac",
    "aacparse",
    "mp4mux",
    "vorbisenc",
    "oggmux",
    "filesink",
];

/// What playbin picks by itself to play an Eddy package from a file URI: the HLS demuxer (GStreamer
/// 1.22 ranks adaptivedemux2's above the older hlsdemux), the two containers and the two decoders.
pub const PLAYBIN_PICKS: &[&str] = &["hlsdemux2", "tsdemux", "qtdemux", "avdec_h264", "avdec_aac"];

/// `gst-launch-1.0 ARGS`, after checking that every element the pipeline names is in
/// [`TEST_ELEMENTS`]. In gst-launch syntax an element is a bare lower-case word; properties have `=`,
/// caps have `/`, pad references end in `.`, links are `!` and options start with `-`.
pub fn gst_launch<S: AsRef<str>>(args: &[S]) -> Result<Command> {
    for word in args.iter().map(AsRef::as_ref) {
        let bare = word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if bare && !word.is_empty() && !TEST_ELEMENTS.contains(&word) {
            bail!(
                "gst-launch element '{word}' is not in gst_tools::TEST_ELEMENTS (tests/tests/deps.rs checks that list)"
            );
        }
    }
    let mut command = Command::new("gst-launch-1.0");
    command.args(args.iter().map(AsRef::as_ref));
    Ok(command)
}

/// Where the system's GStreamer plugins are: the folder of the plugin that holds `queue`.
pub fn system_plugin_dir() -> Result<PathBuf> {
    let output = Command::new("gst-inspect-1.0").arg("queue").output().context("running gst-inspect-1.0")?;
    ensure!(output.status.success(), "gst-inspect-1.0 queue failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let file = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Filename"))
        .map(str::trim)
        .context("no Filename in gst-inspect-1.0 queue")?;
    Path::new(file).parent().map(Path::to_path_buf).context("plugin file without a folder")
}

/// A plugin folder with every system plugin but `left_out` (a file name such as `libgstpango.so`),
/// and the environment that makes GStreamer use only that folder, with a fresh registry.
pub struct PluginsWithout {
    dir: tempfile::TempDir,
}

impl PluginsWithout {
    pub fn new(left_out: &str) -> Result<Self> {
        let system = system_plugin_dir()?;
        ensure!(system.join(left_out).exists(), "{left_out} is not in {}", system.display());
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("plugins"))?;
        for entry in std::fs::read_dir(&system)? {
            let entry = entry?;
            if entry.file_name() != left_out {
                std::os::unix::fs::symlink(entry.path(), dir.path().join("plugins").join(entry.file_name()))?;
            }
        }
        Ok(Self { dir })
    }

    /// Makes `command` see only these plugins.
    pub fn apply(&self, command: &mut Command) {
        command
            .env("GST_PLUGIN_SYSTEM_PATH_1_0", self.dir.path().join("plugins"))
            .env("GST_REGISTRY_1_0", self.dir.path().join("registry.bin"))
            .env_remove("GST_PLUGIN_PATH_1_0")
            .env_remove("GST_PLUGIN_PATH");
    }
}
