//! Eddy's origin: the service users upload videos to, that remembers who owns and may watch each one,
//! packages them with the packager library, and serves the packaged files to the edges.
pub mod api;
pub mod client;
pub mod meta;
pub mod objects;
