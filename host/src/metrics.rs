//! Prometheus metrics at `GET /metrics` (admin token required).
//!
//! Per-tenant series carry a `tenant` label: the slug for the first
//! `metrics_tenant_labels` tenants (default 100), `_other` for the rest, so the
//! number of series stays bounded however many tenants a host serves. Each
//! tenant caches its own counter handles, so the hot path is a few atomic adds.
//! Pool, CPU, compile and cache figures are read from the runtime at scrape time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// The label shared by tenants past the label cap.
pub const OTHER: &str = "_other";

fn latency_histogram() -> Histogram {
    // 100 µs … ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// A tenant's cached series.
#[derive(Debug, Clone)]
pub struct TenantMetrics {
    /// Its `tenant` label.
    pub label: Arc<str>,
    requests: [Counter; 5],
    duration: Histogram,
    metrics: Option<Arc<Metrics>>,
}

impl Default for TenantMetrics {
    /// Series registered nowhere (a tenant outside a host, in tests).
    fn default() -> Self {
        Self {
            label: Arc::from(OTHER),
            requests: Default::default(),
            duration: latency_histogram(),
            metrics: None,
        }
    }
}

impl TenantMetrics {
    /// Records one request: its status and how long it took.
    pub fn request(&self, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.requests[class].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records a limit the tenant ran into (`rate_limited`, `fuel_exhausted` …).
    pub fn limit_hit(&self, limit: &'static str) {
        if let Some(m) = &self.metrics {
            m.limits
                .get_or_create(&vec![
                    ("tenant", self.label.to_string()),
                    ("limit", limit.into()),
                ])
                .inc();
        }
    }

    /// Records log lines of this tenant that could not be archived.
    pub fn log_lines_dropped(&self, lines: u64) {
        if let Some(m) = &self.metrics {
            m.log_dropped
                .get_or_create(&vec![("tenant", self.label.to_string())])
                .inc_by(lines);
        }
    }

    /// Records a guest that failed (`trap`, `deadline`, `fuel`, `no_response` …).
    pub fn guest_failure(&self, kind: &'static str) {
        if let Some(m) = &self.metrics {
            m.failures
                .get_or_create(&vec![
                    ("tenant", self.label.to_string()),
                    ("kind", kind.into()),
                ])
                .inc();
        }
    }
}

/// Every metric of the host.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: HistogramFamily,
    limits: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    log_dropped: Family<Labels, Counter>,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Client connections closed at once because the host was at `--max-connections`.
    pub connections_refused: Counter,
    /// 1 when the host's last database check succeeded, 0 when it failed.
    pub database_up: Gauge,
    /// Log lines the archive took but could not write (their batch's write failed).
    pub log_archive_lost: Counter,
    labelled: Mutex<HashSet<String>>,
    max_labels: usize,
}

impl Metrics {
    /// The metrics of a host, labelling at most `max_labels` tenants; `figures`
    /// adds what is read at scrape time (the runtime's pool, memory, compiles).
    pub fn new(
        figures: Vec<Box<dyn prometheus_client::collector::Collector>>,
        max_labels: usize,
    ) -> Arc<Self> {
        let mut registry = Registry::with_prefix("lodge");
        let requests = Family::<Labels, Counter>::default();
        let duration = HistogramFamily::new_with_constructor(latency_histogram);
        let limits = Family::<Labels, Counter>::default();
        let failures = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Requests routed to tenants, by response status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from routing to the response head, per tenant",
            duration.clone(),
        );
        registry.register(
            "limits_hit",
            "Requests stopped by a limit (rate, concurrency, pool, body, fuel, time, memory)",
            limits.clone(),
        );
        registry.register(
            "guest_failures",
            "Guests that trapped, timed out, ran out of fuel or answered nothing",
            failures.clone(),
        );
        let log_dropped = Family::<Labels, Counter>::default();
        registry.register(
            "log_lines_dropped",
            "Tenant log lines not archived because the tenant's share of the archive queue was full",
            log_dropped.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections closed at once because the host was at --max-connections",
            connections_refused.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 when the host's last database check (a SELECT 1 every 15 s, 5 s to answer) succeeded, 0 when it failed",
            database_up.clone(),
        );
        let log_archive_lost = Counter::default();
        registry.register(
            "log_archive_lines_lost",
            "Tenant log lines the archive could not write to the database (the write of their batch failed); they stay in the live log",
            log_archive_lost.clone(),
        );
        for collector in figures {
            registry.register_collector(collector);
        }
        Arc::new(Self {
            registry,
            requests,
            duration,
            limits,
            failures,
            log_dropped,
            connections_open,
            connections_refused,
            database_up,
            log_archive_lost,
            labelled: Mutex::default(),
            max_labels,
        })
    }

    /// The series of tenant `slug` (its own label while under the cap).
    pub fn tenant(self: &Arc<Self>, slug: &str) -> TenantMetrics {
        let label = {
            let mut labelled = self.labelled.lock().unwrap_or_else(PoisonError::into_inner);
            if labelled.contains(slug) || labelled.len() < self.max_labels {
                labelled.insert(slug.to_owned());
                slug.to_owned()
            } else {
                OTHER.to_owned()
            }
        };
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        TenantMetrics {
            requests: classes.map(|class| {
                self.requests
                    .get_or_create(&vec![("tenant", label.clone()), ("status", class.into())])
                    .clone()
            }),
            duration: self
                .duration
                .get_or_create(&vec![("tenant", label.clone())])
                .clone(),
            label: Arc::from(label),
            metrics: Some(self.clone()),
        }
    }

    /// The OpenMetrics text exposition (see [`classic_text`] for the older format).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Encodes one gauge read at scrape time.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes one counter read at scrape time.
pub fn counter<N>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> std::fmt::Result
where
    ConstCounter<N>: EncodeMetric + TypedMetric,
{
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes a gauge with one series per label set, read at scrape time.
pub fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// `openmetrics` (as [`Metrics::render`] writes it) in Prometheus' classic text
/// format (0.0.4), for the readers that do not ask for OpenMetrics
/// (`promtool check metrics` among them). The two differ here: a counter's
/// `# HELP` and `# TYPE` lines name the family as its samples do (`x_total`,
/// not `x`), `unknown` is `untyped`, and there are no `# UNIT` and `# EOF` lines.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                match text {
                    "" => {}
                    "unknown" if prefix == "# TYPE " => out.push_str(" untyped"),
                    text => {
                        out.push(' ');
                        out.push_str(text);
                    }
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_as_their_samples() {
        let openmetrics = "# HELP lodge_requests Requests.\n\
                           # TYPE lodge_requests counter\n\
                           lodge_requests_total{tenant=\"a\"} 1\n\
                           # HELP lodge_open Open now.\n\
                           # TYPE lodge_open gauge\n\
                           # UNIT lodge_open connections\n\
                           lodge_open 2\n\
                           # EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP lodge_requests_total Requests.\n\
             # TYPE lodge_requests_total counter\n\
             lodge_requests_total{tenant=\"a\"} 1\n\
             # HELP lodge_open Open now.\n\
             # TYPE lodge_open gauge\n\
             lodge_open 2\n"
        );
    }
}
