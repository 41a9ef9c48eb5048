//! Prometheus metrics of the service, in a registry of its own (not the
//! process-wide default one, so several apps in one test process do not mix).
//!
//! Label values are bounded: `path` is a route name from `route::Route`,
//! `code` an HTTP status, `kind` a `generator::Flaw`. Handles for the hot
//! paths are resolved once here, so recording a request is a few atomic adds.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::generator::Flaw;
use crate::route::Route;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// One histogram per route, in `Route::ALL` order.
    durations: Vec<Histogram>,
    pub changes_generated: IntCounter,
    /// One counter per flaw, in `Flaw::ALL` order.
    invalid_generated: Vec<IntCounter>,
    pub log_entries: IntGauge,
    pub log_head: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "source_requests_total",
                "HTTP requests answered, by route and status code",
            ),
            &["path", "code"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "source_request_duration_seconds",
                "Time from receiving a request to having written its response, by route",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["path"],
        )?;
        let changes_generated = IntCounter::new(
            "source_changes_generated_total",
            "Changes generated (good and deliberately bad)",
        )?;
        let invalid = IntCounterVec::new(
            Opts::new(
                "source_invalid_changes_generated_total",
                "Changes generated deliberately bad, by how they are bad",
            ),
            &["kind"],
        )?;
        let log_entries = IntGauge::new(
            "source_change_log_entries",
            "Changes currently kept in the change log for replay",
        )?;
        let log_head = IntGauge::new(
            "source_change_log_head_cursor",
            "Newest sequence number in the change log",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(changes_generated.clone()))?;
        registry.register(Box::new(invalid.clone()))?;
        registry.register(Box::new(log_entries.clone()))?;
        registry.register(Box::new(log_head.clone()))?;

        // Each route's usual answer is exported from the start (at 0), so a
        // scrape finds `source_requests_total` before the first request.
        for route in Route::ALL {
            let usual = if route == Route::Other { "404" } else { "200" };
            requests.with_label_values(&[route.label(), usual]);
        }
        let durations = Route::ALL
            .iter()
            .map(|route| durations.with_label_values(&[route.label()]))
            .collect();
        let invalid_generated = Flaw::ALL
            .iter()
            .map(|flaw| invalid.with_label_values(&[flaw.as_str()]))
            .collect();
        Ok(Metrics {
            registry,
            requests,
            durations,
            changes_generated,
            invalid_generated,
            log_entries,
            log_head,
        })
    }

    /// Counts a request about to be answered with `status`: before the
    /// answer goes out, so a client that has it and then scrapes sees it.
    pub fn count_request(&self, route: Route, status: u16) {
        let mut code = [0u8; 5];
        self.requests
            .with_label_values(&[route.label(), status_text(status, &mut code)])
            .inc();
    }

    /// Records how long answering a request took.
    pub fn observe_duration(&self, route: Route, elapsed: Duration) {
        if let Some(histogram) = self.durations.get(route.index()) {
            histogram.observe(elapsed.as_secs_f64());
        }
    }

    /// Records a change made bad on purpose.
    pub fn invalid_generated(&self, flaw: Flaw) {
        if let Some(counter) = self.invalid_generated.get(flaw.index()) {
            counter.inc();
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// `status` as decimal text, without allocating.
fn status_text(status: u16, buf: &mut [u8; 5]) -> &str {
    let mut n = status;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_required_names() {
        let metrics = Metrics::new().unwrap();
        let fresh = String::from_utf8(metrics.render().unwrap()).unwrap();
        assert!(
            fresh.contains(r#"source_requests_total{code="200",path="/users/changes"} 0"#),
            "requests are exported before the first one:\n{fresh}"
        );
        metrics.count_request(Route::Changes, 200);
        metrics.observe_duration(Route::Changes, Duration::from_micros(300));
        metrics.count_request(Route::Other, 404);
        metrics.observe_duration(Route::Other, Duration::from_micros(30));
        metrics.changes_generated.inc_by(7);
        metrics.invalid_generated(Flaw::EmailTaken);
        metrics.log_entries.set(7);
        let text = String::from_utf8(metrics.render().unwrap()).unwrap();
        for expected in [
            r#"source_requests_total{code="200",path="/users/changes"} 1"#,
            r#"source_requests_total{code="404",path="other"} 1"#,
            "source_changes_generated_total 7",
            r#"source_invalid_changes_generated_total{kind="email_taken"} 1"#,
            "source_change_log_entries 7",
            r#"source_request_duration_seconds_bucket{path="/users/changes",le="0.0005"} 1"#,
            r#"source_request_duration_seconds_count{path="/healthz"} 0"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn status_codes_as_text() {
        let mut buf = [0u8; 5];
        assert_eq!(status_text(200, &mut buf), "200");
        assert_eq!(status_text(0, &mut buf), "0");
        assert_eq!(status_text(65535, &mut buf), "65535");
    }
}
