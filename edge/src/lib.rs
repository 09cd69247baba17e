//! Eddy's edge cache. See ARCHITECTURE.md for the map; in short, a request flows through `phases`
//! (in the order `phases::handle` runs them), sharing the app state in `state`; the cache lives in
//! `cache` (keys, policy, storage, coalescing), origins in `origin`, rate-limit decisions in `ratelimit`,
//! counters in `metrics` (a leaf), and the listeners in `server` and `admin`.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod origin;
pub mod phases;
pub mod ratelimit;
pub mod request_body;
pub mod server;
pub mod state;
pub mod stats_cmd;
