//! Prometheus metrics, rendered in the text format at `GET /metrics`.
//!
//! Counters and histograms are updated where things happen (the receiver, the worker); the
//! inbox gauges are read from Postgres when the metrics are scraped, so every replica reports
//! the same backlog. One [`Metrics`] value is shared by a process's parts; nothing is global.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    table: &'static str,
    kind: &'static str,
}

/// Reconciliation's metrics (`src/reconcile/`): the tail's counter, and gauges read from the
/// database at each scrape.
struct ReconcileMetrics {
    events_recovered: Counter,
    cursor_age_seconds: Gauge<f64, AtomicU64>,
    drift: Family<DriftLabels, Gauge>,
    last_success_seconds: Gauge<f64, AtomicU64>,
}

impl ReconcileMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = ReconcileMetrics {
            events_recovered: Counter::default(),
            cursor_age_seconds: Gauge::default(),
            drift: Family::default(),
            last_success_seconds: Gauge::default(),
        };
        registry.register(
            "events_recovered",
            "Events the Events API tail stored that no webhook had delivered",
            metrics.events_recovered.clone(),
        );
        registry.register(
            "events_cursor_age_seconds",
            "Age of the Events API tail's cursor (its event's created_at; WorkOS keeps 30 days)",
            metrics.cursor_age_seconds.clone(),
        );
        registry.register(
            "reconcile_drift",
            "Drift the last full snapshot reconciliation found (and repaired), by table and kind",
            metrics.drift.clone(),
        );
        registry.register(
            "reconcile_last_success_timestamp_seconds",
            "When the last full snapshot reconciliation finished without error (Unix time)",
            metrics.last_success_seconds.clone(),
        );
        metrics
    }

    async fn refresh(&self, pool: &PgPool) {
        match crate::reconcile::status(pool).await {
            Ok(status) => {
                if let Some(age) = status.cursor_age_seconds {
                    self.cursor_age_seconds.set(age);
                }
                if let Some(run) = status.last_run {
                    self.last_success_seconds
                        .set(run.finished_at.timestamp_millis() as f64 / 1000.0);
                    let drift: crate::reconcile::Drift =
                        serde_json::from_value(run.drift).unwrap_or_default();
                    for (table, kind, count) in drift.entries() {
                        self.drift
                            .get_or_create(&DriftLabels { table, kind })
                            .set(count as i64);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot read the reconciliation state for metrics")
            }
        }
    }
}

// ---- The read API's labels ----

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRouteLabels {
    route: &'static str,
}

fn api_latency_histogram() -> Histogram {
    // 0.1 ms to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 15))
}

/// The service's metrics.
pub struct Metrics {
    // The read API (`src/api/`).
    api_requests: Family<ApiRequestLabels, Counter>,
    api_request_seconds: Family<ApiRouteLabels, Histogram, fn() -> Histogram>,
    registry: Registry,
    deliveries: Family<OutcomeLabels, Counter>,
    request_seconds: Histogram,
    events_applied: Family<EventLabels, Counter>,
    events_failed: Family<EventLabels, Counter>,
    worker_lag_seconds: Histogram,
    commit_rows: Histogram,
    inbox_depth: Family<StatusLabels, Gauge>,
    oldest_pending_seconds: Gauge<f64, AtomicU64>,
    reconcile: ReconcileMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of metrics, all at zero.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("dsyncd");
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Webhook deliveries by outcome: accepted, duplicate, or the rejection reason",
            deliveries.clone(),
        );
        // 0.25 ms to about 4 s.
        let request_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 15));
        registry.register(
            "request_duration_seconds",
            "Time from a delivery's headers to its answer",
            request_seconds.clone(),
        );
        let commit_rows = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "ingest_commit_rows",
            "Deliveries written per group commit",
            commit_rows.clone(),
        );
        let events_applied = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_applied",
            "Events finished by the worker (done or ignored), by event type",
            events_applied.clone(),
        );
        let events_failed = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_failed",
            "Failed attempts to apply an event, by event type",
            events_failed.clone(),
        );
        // 1 ms to about 4.5 hours.
        let worker_lag_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 24));
        registry.register(
            "worker_lag_seconds",
            "Time from a delivery's arrival to its event being applied",
            worker_lag_seconds.clone(),
        );
        let inbox_depth = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "inbox_depth",
            "Inbox rows waiting or stuck, by status (pending, dead)",
            inbox_depth.clone(),
        );
        let oldest_pending_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "inbox_oldest_pending_seconds",
            "Age of the oldest pending inbox row (0 when there is none)",
            oldest_pending_seconds.clone(),
        );
        let reconcile = ReconcileMetrics::register(&mut registry);
        // ---- The read API ----
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Read API requests by route (the matched path) and HTTP status",
            api_requests.clone(),
        );
        let api_request_seconds =
            Family::<ApiRouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                api_latency_histogram,
            );
        registry.register(
            "api_request_duration_seconds",
            "Time from a read API request's headers to its answer, by route",
            api_request_seconds.clone(),
        );
        Arc::new(Metrics {
            reconcile,
            api_requests,
            api_request_seconds,
            registry,
            deliveries,
            request_seconds,
            events_applied,
            events_failed,
            worker_lag_seconds,
            commit_rows,
            inbox_depth,
            oldest_pending_seconds,
        })
    }

    /// Counts a delivery's outcome and how long its answer took.
    pub fn delivery(&self, outcome: &'static str, elapsed: Duration) {
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.request_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts a read API request on `route` (its path pattern) and how long its answer took.
    pub fn api_request(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.api_requests
            .get_or_create(&ApiRequestLabels { route, status })
            .inc();
        self.api_request_seconds
            .get_or_create(&ApiRouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// Records how many deliveries one group commit wrote.
    pub fn committed(&self, rows: usize) {
        self.commit_rows.observe(rows as f64);
    }

    /// Counts an event the worker finished, and its lag since arrival.
    pub fn applied(&self, event: &str, lag: Duration) {
        self.events_applied
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc();
        self.worker_lag_seconds.observe(lag.as_secs_f64());
    }

    /// Counts a failed attempt.
    pub fn failed(&self, event: &str) {
        self.events_failed
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Counts events the Events API tail recovered (stored first, before any webhook).
    pub fn events_recovered(&self, count: u64) {
        self.reconcile.events_recovered.inc_by(count);
    }

    /// Reads the inbox gauges from Postgres and renders everything in the Prometheus text
    /// format. If the database does not answer, the gauges keep their last values.
    pub async fn render(&self, pool: &PgPool) -> String {
        match crate::inbox::backlog(pool).await {
            Ok(backlog) => {
                for (status, count) in [("pending", backlog.pending), ("dead", backlog.dead)] {
                    self.inbox_depth
                        .get_or_create(&StatusLabels { status })
                        .set(count);
                }
                self.oldest_pending_seconds
                    .set(backlog.oldest_pending_seconds);
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot read the inbox backlog for metrics")
            }
        }
        self.reconcile.refresh(pool).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
