//! Code that several Eddy crates use: byte sizes and durations as people write them, the media types of
//! HLS files, logging set-up, and where each GStreamer element Eddy uses comes from (for the packager's
//! and the player's preflight). The link simulation (`netsim`) lives here too so that the player's
//! tests, the simulator binary and the ABR evaluation all shape traffic the same way.

pub mod duration;
pub mod gst_elements;
pub mod logging;
pub mod media;
pub mod netsim;
pub mod size;
