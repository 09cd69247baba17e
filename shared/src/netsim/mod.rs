//! Link simulation: bandwidth traces and a shaped link shared by every connection through it.
//!
//! - [`trace`]: pure, deterministic bandwidth traces (Pensieve and Mahimahi files, step and shape
//!   patterns, seeded generators) and the transfer-time math the ABR evaluation uses in virtual time.
//! - [`link`]: the shared bottleneck: a pure booking schedule, a virtual-time simulation of concurrent
//!   downloads, and the thin async [`Link`] the `eddy-netsim` proxy paces response bodies with.

pub mod link;
pub mod trace;

pub use link::{simulate, Delivery, Download, Link, LinkSchedule};
pub use trace::{generate, Family, Trace, TraceError, PATTERN_HELP};
