//! Eddy's origin: the service users upload videos to, that remembers who owns and may watch each one,
//! packages them with the packager library, and serves the packaged files to the edges.
//!
//! Pure rules (`chunks`: how a file is cut and how chunk URLs are signed; `tokens`: API tokens;
//! `config`) apart from the I/O: `meta` (SQLite or PostgreSQL), `objects` (a folder or S3), `server`
//! (the HTTP API), `jobs` (packaging workers and the janitor), `service` (start-up), and `client` (the
//! logic of `eddy-upload`).
pub mod api;
pub mod chunks;
pub mod client;
pub mod config;
pub mod jobs;
pub mod meta;
pub mod metrics;
pub mod objects;
pub mod server;
pub mod service;
pub mod tokens;
