//! The cache, split as Pingora splits it: how keys are built (`key`), what may be stored and for how long
//! (`policy`, pure), where objects live and how they are evicted (`storage`, moka weighted by bytes), and
//! who fetches a missing object while others wait (`coalesce`).

pub mod coalesce;
pub mod directives;
pub mod key;
pub mod policy;
pub mod s3fifo;
pub mod storage;

pub use key::CacheKey;
pub use policy::{CachedObject, Lifecycle};
pub use storage::Storage;
