//! The origin's Prometheus metrics, served at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub uploads_created: Counter,
    pub chunks_received: Counter,
    pub chunk_bytes: Counter,
    pub chunks_refused: Family<ResultLabel, Counter>,
    /// `result` is `stored` or `deduplicated`.
    pub uploads_completed: Family<ResultLabel, Counter>,
    pub uploads_expired: Counter,
    /// `result` is `ready` or `failed`.
    pub packaging_runs: Family<ResultLabel, Counter>,
    pub packaging_in_progress: Gauge,
    /// Files served under `/videos/`: `result` is `ok`, `not_modified`, `refused` or `not_found`.
    pub served: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("eddy_origin");
        let metrics = Metrics {
            uploads_created: Counter::default(),
            chunks_received: Counter::default(),
            chunk_bytes: Counter::default(),
            chunks_refused: Family::default(),
            uploads_completed: Family::default(),
            uploads_expired: Counter::default(),
            packaging_runs: Family::default(),
            packaging_in_progress: Gauge::default(),
            served: Family::default(),
            registry: Registry::default(),
        };
        registry.register("uploads_created", "Uploads started", metrics.uploads_created.clone());
        registry.register("chunks_received", "Chunks stored", metrics.chunks_received.clone());
        registry.register("chunk_bytes", "Bytes of chunks stored", metrics.chunk_bytes.clone());
        registry.register("chunks_refused", "Chunk uploads refused, by reason", metrics.chunks_refused.clone());
        registry.register(
            "uploads_completed",
            "Uploads completed, stored or deduplicated",
            metrics.uploads_completed.clone(),
        );
        registry.register("uploads_expired", "Abandoned uploads deleted", metrics.uploads_expired.clone());
        registry.register("packaging_runs", "Packaging runs finished, by result", metrics.packaging_runs.clone());
        registry.register("packaging_in_progress", "Packaging jobs running now", metrics.packaging_in_progress.clone());
        registry.register("served", "Files served to edges and players, by result", metrics.served.clone());
        Metrics { registry, ..metrics }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
