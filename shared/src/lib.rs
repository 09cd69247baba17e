//! Code that several Eddy crates use: byte sizes and durations as people write them, the media types of
//! HLS files, logging set-up, signed playback URLs (made by the origin, checked by the edges), and where
//! each GStreamer element Eddy uses comes from (for the packager's and the player's preflight). The link simulation (`netsim`) lives here too so that the player's
//! tests, the simulator binary and the ABR evaluation all shape traffic the same way.
//!
//! `netsim` is behind the cargo feature `netsim` (off by default), so that crates that need only the
//! rest (the edge, the packager) do not build its dependencies (rand, rand_chacha, tokio) through this
//! crate. The player and `eddy-netsim` turn the feature on.

pub mod config_error;
pub mod duration;
pub mod gst_elements;
pub mod logging;
pub mod media;
#[cfg(feature = "netsim")]
pub mod netsim;
pub mod signed_url;
pub mod size;
