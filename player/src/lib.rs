//! Eddy's adaptive-bitrate HLS player: pure ABR and estimation (`abr`), QoE accounting (`qoe`),
//! stall detection (`stall`), playlists (`playlist`) and the renditions chosen from them
//! (`renditions`), WebVTT subtitles (`webvtt`, placed by `timestamps`), keyboard controls
//! (`controls`), the I/O shells around them (`fetch`, `pipeline`, `session`), reports and plots
//! (`report`), and the virtual-time ABR evaluation (`sim`).

pub mod abr;
pub mod controls;
pub mod crypto;
pub mod events;
pub mod fetch;
pub mod pipeline;
pub mod playlist;
pub mod qoe;
pub mod renditions;
pub mod report;
pub mod session;
pub mod sim;
pub mod stall;
pub mod timestamps;
pub mod webvtt;
