//! Code that several Eddy crates use: byte sizes and durations as people write them, the media types of
//! HLS files, and logging set-up. The link simulation (`netsim`) lives here too so that the player's
//! tests, the simulator binary and the ABR evaluation all shape traffic the same way.

pub mod duration;
pub mod logging;
pub mod media;
pub mod netsim;
pub mod size;
