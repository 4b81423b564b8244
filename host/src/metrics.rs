//! Prometheus metrics (`GET /metrics`): requests by provider, status and cache state;
//! upstream and signer latency; refusals by reason; auth-module failures and the trap
//! circuit breaker. Labels never carry secrets (D18).

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// One provider's latency histograms, looked up once instead of by label on every
/// request.
#[derive(Debug, Clone)]
pub struct ProviderMetrics {
    upstream: Histogram,
    signer: Histogram,
}

impl ProviderMetrics {
    /// Record upstream latency.
    pub fn upstream(&self, d: Duration) {
        self.upstream.observe(d.as_secs_f64());
    }

    /// Record signer latency.
    pub fn signer(&self, d: Duration) {
        self.signer.observe(d.as_secs_f64());
    }
}

/// Every metric Outpost exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    refusals: IntCounterVec,
    upstream: HistogramVec,
    signer: HistogramVec,
    module_failures: IntCounterVec,
    module_disabled: IntGaugeVec,
}

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

impl Metrics {
    /// Register every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "outpost_requests_total",
                "Proxied requests by provider, status and cache state",
            ),
            &["provider", "status", "cache"],
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "outpost_refusals_total",
                "Requests refused by the proxy, by reason (error code)",
            ),
            &["reason"],
        )?;
        let upstream = HistogramVec::new(
            HistogramOpts::new(
                "outpost_upstream_seconds",
                "Time to the upstream's response head",
            )
            .buckets(BUCKETS.to_vec()),
            &["provider"],
        )?;
        let signer = HistogramVec::new(
            HistogramOpts::new(
                "outpost_signer_seconds",
                "Auth module sign-request latency, instantiation included",
            )
            .buckets(BUCKETS.to_vec()),
            &["provider"],
        )?;
        let module_failures = IntCounterVec::new(
            Opts::new(
                "outpost_module_failures_total",
                "Auth module traps and deadline overruns, by provider",
            ),
            &["provider"],
        )?;
        let module_disabled = IntGaugeVec::new(
            Opts::new(
                "outpost_module_disabled",
                "1 while a provider's auth module is disabled by the trap circuit breaker",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(module_failures.clone()))?;
        registry.register(Box::new(module_disabled.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(upstream.clone()))?;
        registry.register(Box::new(signer.clone()))?;
        Ok(Self {
            registry,
            requests,
            refusals,
            upstream,
            signer,
            module_failures,
            module_disabled,
        })
    }

    /// Count a finished request.
    pub fn request(&self, provider: &str, status: u16, cache: &str) {
        // A valid status's label is a static string: no allocation per request.
        let code = http::StatusCode::from_u16(status);
        let text;
        let status = match &code {
            Ok(c) => c.as_str(),
            Err(_) => {
                text = status.to_string();
                &text
            }
        };
        self.requests
            .with_label_values(&[provider, status, cache])
            .inc();
    }

    /// Count a refusal.
    pub fn refusal(&self, code: &str) {
        self.refusals.with_label_values(&[code]).inc();
    }

    /// `provider`'s latency histograms.
    pub fn provider(&self, provider: &str) -> ProviderMetrics {
        ProviderMetrics {
            upstream: self.upstream.with_label_values(&[provider]),
            signer: self.signer.with_label_values(&[provider]),
        }
    }

    /// Count an auth-module trap or deadline overrun.
    pub fn module_failure(&self, provider: &str) {
        self.module_failures.with_label_values(&[provider]).inc();
    }

    /// Whether a provider's module is disabled by the circuit breaker right now.
    pub fn module_disabled(&self, provider: &str, disabled: bool) {
        self.module_disabled
            .with_label_values(&[provider])
            .set(i64::from(disabled));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
