//! Where the GStreamer elements Eddy uses come from: the plugin that provides each one and the
//! Debian/Ubuntu package that ships that plugin. `eddy-package` and `eddy-play` check their elements
//! before they start and use this table to say what to install when one is missing.
//!
//! The table is data, not a guess: `tests/tests/deps.rs` asks `gst-inspect-1.0` and `dpkg` on the
//! machine for every element the code uses, and fails when a row disagrees or is missing.

use std::fmt;

/// One element: its factory name, its plugin's name and the Debian package that ships the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementSource {
    pub element: &'static str,
    pub plugin: &'static str,
    pub package: &'static str,
}

const fn row(element: &'static str, plugin: &'static str, package: &'static str) -> ElementSource {
    ElementSource { element, plugin, package }
}

const CORE: &str = "libgstreamer1.0-0";
const BASE: &str = "gstreamer1.0-plugins-base";
const GOOD: &str = "gstreamer1.0-plugins-good";
const BAD: &str = "gstreamer1.0-plugins-bad";
const UGLY: &str = "gstreamer1.0-plugins-ugly";
const LIBAV: &str = "gstreamer1.0-libav";
const X: &str = "gstreamer1.0-x";

/// Every element the packager, the player and the tests use (by name, or found by decodebin and
/// playbin for what Eddy packages), sorted by element name.
pub const ELEMENT_SOURCES: &[ElementSource] = &[
    row("aacparse", "audioparsers", GOOD),
    row("appsink", "app", BASE),
    row("appsrc", "app", BASE),
    row("audioconvert", "audioconvert", BASE),
    row("audioresample", "audioresample", BASE),
    row("audiotestsrc", "audiotestsrc", BASE),
    row("autoaudiosink", "autodetect", GOOD),
    row("autovideosink", "autodetect", GOOD),
    row("avdec_aac", "libav", LIBAV),
    row("avdec_h264", "libav", LIBAV),
    row("avenc_aac", "libav", LIBAV),
    row("capsfilter", "coreelements", CORE),
    row("decodebin", "playback", BASE),
    row("fakesink", "coreelements", CORE),
    row("filesink", "coreelements", CORE),
    row("h264parse", "videoparsersbad", BAD),
    row("hlsdemux2", "adaptivedemux2", GOOD),
    row("mp4mux", "isomp4", GOOD),
    row("mpegtsmux", "mpegtsmux", BAD),
    row("oggmux", "ogg", BASE),
    row("playbin", "playback", BASE),
    row("qtdemux", "isomp4", GOOD),
    row("queue", "coreelements", CORE),
    row("splitmuxsink", "multifile", GOOD),
    row("tee", "coreelements", CORE),
    row("textoverlay", "pango", X),
    row("timeoverlay", "pango", X),
    row("tsdemux", "mpegtsdemux", BAD),
    row("uridecodebin", "playback", BASE),
    row("videoconvert", "videoconvertscale", BASE),
    row("videorate", "videorate", BASE),
    row("videoscale", "videoconvertscale", BASE),
    row("videotestsrc", "videotestsrc", BASE),
    row("vorbisenc", "vorbis", BASE),
    row("x264enc", "x264", UGLY),
];

/// The table's row for `element`, if it has one.
pub fn source_of(element: &str) -> Option<&'static ElementSource> {
    ELEMENT_SOURCES.iter().find(|row| row.element == element)
}

/// GStreamer elements that are not installed, with what to install for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingElements {
    pub elements: Vec<String>,
}

impl MissingElements {
    /// The Debian packages that provide the missing elements, each once, in order of first need.
    pub fn packages(&self) -> Vec<&'static str> {
        let mut packages = Vec::new();
        for source in self.elements.iter().filter_map(|e| source_of(e)) {
            if !packages.contains(&source.package) {
                packages.push(source.package);
            }
        }
        packages
    }
}

impl fmt::Display for MissingElements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.elements.len() == 1 { "" } else { "s" };
        write!(f, "missing GStreamer element{plural}:")?;
        for element in &self.elements {
            match source_of(element) {
                Some(source) => write!(
                    f,
                    "\n  {element}: from the GStreamer plugin '{}', in the Debian/Ubuntu package {}",
                    source.plugin, source.package
                )?,
                None => write!(f, "\n  {element}: install the GStreamer plugin that provides it")?,
            }
        }
        let packages = self.packages();
        if packages.is_empty() {
            write!(f, "\ninstall everything Eddy needs with: bash scripts/install-deps.sh")
        } else {
            write!(
                f,
                "\ninstall with: sudo apt-get install {}  \
                 (or: bash scripts/install-deps.sh, for everything Eddy needs)",
                packages.join(" ")
            )
        }
    }
}

impl std::error::Error for MissingElements {}

/// The elements of `required` for which `installed` says no, each once. `installed` is the caller's
/// question to GStreamer (`gst::ElementFactory::find(name).is_some()`), so this stays pure.
pub fn check<'a>(
    required: impl IntoIterator<Item = &'a str>,
    installed: impl Fn(&str) -> bool,
) -> Result<(), MissingElements> {
    let mut missing: Vec<String> = Vec::new();
    for element in required {
        if !installed(element) && !missing.iter().any(|m| m == element) {
            missing.push(element.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(MissingElements { elements: missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_has_one_row_per_element() {
        for pair in ELEMENT_SOURCES.windows(2) {
            assert!(pair[0].element < pair[1].element, "{} before {}", pair[0].element, pair[1].element);
        }
    }

    #[test]
    fn everything_installed_passes() {
        assert_eq!(check(["tee", "queue"], |_| true), Ok(()));
    }

    #[test]
    fn a_missing_element_names_its_plugin_and_package() {
        let missing = check(["tee", "timeoverlay", "textoverlay", "timeoverlay"], |e| e == "tee").unwrap_err();
        assert_eq!(missing.elements, ["timeoverlay", "textoverlay"]);
        assert_eq!(missing.packages(), ["gstreamer1.0-x"]);
        let text = missing.to_string();
        assert!(text
            .contains("timeoverlay: from the GStreamer plugin 'pango', in the Debian/Ubuntu package gstreamer1.0-x"));
        assert!(text.contains("sudo apt-get install gstreamer1.0-x "), "{text}");
    }

    #[test]
    fn an_element_outside_the_table_still_gets_an_answer() {
        let missing = check(["nosuchelement"], |_| false).unwrap_err();
        let text = missing.to_string();
        assert!(text.contains("nosuchelement: install the GStreamer plugin that provides it"), "{text}");
        assert!(text.contains("bash scripts/install-deps.sh"), "{text}");
    }
}
