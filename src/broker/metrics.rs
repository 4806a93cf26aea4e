//! The broker's counters, exposed on `GET /metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::authorize::Reason;

/// Upper bounds of the request latency histogram, in seconds.
const BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// Counters shared by every connection; all updates are relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Decisions, by reason (index in [`Reason::ALL`]).
    decisions: [AtomicU64; Reason::ALL.len()],
    /// Requests with a live lease that no route allows (forward-auth and the proxy): denied
    /// before any action is asked about.
    no_route: AtomicU64,
    /// Requests by latency bucket (cumulative counts are worked out when printed).
    latency: [AtomicU64; BUCKETS.len()],
    /// Requests slower than the last bucket.
    latency_over: AtomicU64,
    /// Sum of all request latencies, in microseconds.
    latency_sum_us: AtomicU64,
    /// Requests answered.
    requests: AtomicU64,
}

impl Metrics {
    /// Counts one decision.
    pub fn decided(&self, reason: Reason) {
        if let Some(index) = Reason::ALL.iter().position(|r| *r == reason) {
            self.decisions[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one request that no route allows.
    pub fn no_route(&self) {
        self.no_route.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answered request and how long it took.
    pub fn answered(&self, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        match BUCKETS.iter().position(|bound| seconds <= *bound) {
            Some(index) => self.latency[index].fetch_add(1, Ordering::Relaxed),
            None => self.latency_over.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The Prometheus text exposition, with `active` leases (None: the store could not be read).
    pub fn render(&self, active: Option<usize>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP lease_decisions_total Decisions made, by result and reason.\n\
             # TYPE lease_decisions_total counter\n",
        );
        for (reason, count) in Reason::ALL.iter().zip(&self.decisions) {
            if matches!(reason, Reason::NoToken | Reason::Error)
                && count.load(Ordering::Relaxed) == 0
            {
                continue;
            }
            let result = if *reason == Reason::Granted {
                "granted"
            } else {
                "denied"
            };
            let _ = writeln!(
                out,
                "lease_decisions_total{{result=\"{result}\",reason=\"{}\"}} {}",
                reason.as_str(),
                count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "lease_decisions_total{{result=\"denied\",reason=\"no route\"}} {}",
            self.no_route.load(Ordering::Relaxed)
        );
        if let Some(active) = active {
            let _ = write!(
                out,
                "# HELP lease_active_leases Leases that can still grant.\n\
                 # TYPE lease_active_leases gauge\n\
                 lease_active_leases {active}\n"
            );
        }
        out.push_str(
            "# HELP lease_request_duration_seconds Time to answer a request.\n\
             # TYPE lease_request_duration_seconds histogram\n",
        );
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.latency) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "lease_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.requests.load(Ordering::Relaxed);
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = write!(
            out,
            "lease_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}\n\
             lease_request_duration_seconds_sum {sum}\n\
             lease_request_duration_seconds_count {total}\n"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_decisions_and_latencies() {
        let metrics = Metrics::default();
        metrics.decided(Reason::Granted);
        metrics.decided(Reason::Granted);
        metrics.decided(Reason::OutOfScope);
        metrics.answered(Duration::from_micros(300));
        metrics.answered(Duration::from_secs(2));
        let text = metrics.render(Some(4));
        assert!(text.contains("lease_decisions_total{result=\"granted\",reason=\"granted\"} 2\n"));
        assert!(
            text.contains("lease_decisions_total{result=\"denied\",reason=\"out of scope\"} 1\n")
        );
        assert!(text.contains("lease_decisions_total{result=\"denied\",reason=\"expired\"} 0\n"));
        assert!(!text.contains("reason=\"error\""));
        assert!(text.contains("lease_active_leases 4\n"));
        assert!(text.contains("lease_request_duration_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("lease_request_duration_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("lease_request_duration_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("lease_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("lease_request_duration_seconds_count 2\n"));
    }
}
