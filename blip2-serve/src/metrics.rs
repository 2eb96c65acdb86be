//! The server's Prometheus metrics (`GET /metrics`, text exposition format).

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

/// Labels of the latency histograms: `encode`, `prefill`, `decode` or `total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

type HistogramFamily = Family<PhaseLabels, Histogram, fn() -> Histogram>;

/// Every metric, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    queue_depth: Gauge<i64, AtomicI64>,
    batch_size: Histogram,
    tokens: Counter,
    latency: HistogramFamily,
    cache_hits: Counter,
    cache_misses: Counter,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("blip2");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        let queue_depth = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "queue_depth",
            "Requests waiting for the model",
            queue_depth.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "batch_size",
            "Requests per generate call",
            batch_size.clone(),
        );
        let tokens = Counter::default();
        registry.register("generated_tokens", "Tokens generated", tokens.clone());
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "latency_seconds",
            "Time per generate call by phase (encode, prefill, decode) and per request (total)",
            latency.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "image_cache_hits",
            "Images whose encoding was kept from an earlier request",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "image_cache_misses",
            "Images encoded (not found in the cache)",
            cache_misses.clone(),
        );
        Metrics {
            registry,
            requests,
            queue_depth,
            batch_size,
            tokens,
            latency,
            cache_hits,
            cache_misses,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                status: status.to_string(),
            })
            .inc();
    }

    /// One more request queued.
    pub fn enqueued(&self) {
        self.queue_depth.inc();
    }

    /// One request taken off the queue.
    pub fn dequeued(&self) {
        self.queue_depth.dec();
    }

    /// One generate call over `requests` requests that took `encode`, `prefill` and `decode`
    /// and produced `tokens` tokens.
    pub fn batch(&self, requests: usize, timings: &blip2::Timings, tokens: usize) {
        self.batch_size.observe(requests as f64);
        self.tokens.inc_by(tokens as u64);
        for (phase, d) in [
            ("encode", timings.encode),
            ("prefill", timings.prefill),
            ("decode", timings.decode),
        ] {
            self.observe(phase, d);
        }
    }

    /// A batch's images: `hits` found in the image cache, `misses` encoded.
    pub fn image_cache(&self, hits: usize, misses: usize) {
        self.cache_hits.inc_by(hits as u64);
        self.cache_misses.inc_by(misses as u64);
    }

    /// One streamed generation of `tokens` tokens.
    pub fn streamed(&self, tokens: usize) {
        self.batch_size.observe(1.0);
        self.tokens.inc_by(tokens as u64);
    }

    /// A request's whole time in the server.
    pub fn total(&self, elapsed: Duration) {
        self.observe("total", elapsed);
    }

    fn observe(&self, phase: &'static str, d: Duration) {
        self.latency
            .get_or_create(&PhaseLabels { phase })
            .observe(d.as_secs_f64());
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
