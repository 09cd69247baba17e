//! Eddy's packager: one video (or a generated test pattern) in, an HLS bitrate ladder out.
//!
//! Pure parts (ladder parsing, playlists and bitrate figures, AES-128, fMP4 splitting, the separate
//! audio rendition's re-segmenting, codec strings) are plain functions; [`package`] and
//! [`package_with`] are the I/O shell that runs the GStreamer pipeline and writes files.

pub mod audio;
pub mod codecs;
pub mod crypto;
pub mod error;
pub mod fmp4;
pub mod ladder;
pub mod ll_hls;
pub mod output;
pub mod pipeline;
pub mod playlist;
mod run;

pub use error::PackageError;
pub use run::{
    is_language_tag, package, package_with, AudioLayout, AudioSummary, LowLatency, PackageConfig, PackageOptions,
    Progress, RenditionSummary, Summary, AUDIO_GROUP, AUDIO_RENDITION, MASTER_PLAYLIST,
};
