//! Blocked-endpoint reports: which of the server's routes members find
//! blocked, counted per route and per member country, for operators (the
//! `/reachability` HTTP view) and for deciding where relays are needed.
//!
//! A member's client reports the routes that failed (route, failure class,
//! the hour) when it next gets through. Only routes the server itself lists
//! are counted, at most [`MAX_ROUTES_PER_REPORT`] per report, so a member
//! cannot grow this table with invented names; the table is bounded by the
//! server's routes times the countries. It holds counts only: no account
//! ids, no addresses. It lives in memory and starts empty on restart —
//! blocking is news, not history.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use postern_proto::pb;
use serde::Serialize;

/// Routes counted from one report at most; the rest are ignored.
pub const MAX_ROUTES_PER_REPORT: usize = 32;

/// Failure classes counted; anything else counts as "other".
const CLASSES: &[&str] = &[
    "refused",
    "reset",
    "timeout",
    "tls-alert",
    "freeze",
    "certificate-mismatch",
    "not-relay",
    "closed",
    "other",
];

/// Counts for one route in one country.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RouteCounts {
    /// Reports per failure class.
    pub failures: BTreeMap<&'static str, u64>,
    /// All reports.
    pub reports: u64,
    /// The latest hour (since the Unix epoch) a failure was seen.
    pub last_hour: u64,
}

/// One row of the operators' view.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RouteReport {
    /// `carrier://HOST:PORT[/PATH]`.
    pub route: String,
    /// The reporting members' country (ISO 3166 alpha-2; `ZZ` unknown).
    pub country: String,
    /// What they saw.
    #[serde(flatten)]
    pub counts: RouteCounts,
}

/// The aggregate of every report since the server started.
#[derive(Debug)]
pub struct Reachability {
    known: HashSet<String>,
    counts: Mutex<BTreeMap<(String, String), RouteCounts>>,
}

impl Reachability {
    /// Counts reports about `routes` (the server's own), ignoring others.
    pub fn new(routes: impl IntoIterator<Item = String>) -> Self {
        Reachability {
            known: routes.into_iter().collect(),
            counts: Mutex::default(),
        }
    }

    /// Adds a member's report; returns how many routes were counted.
    /// `now_hour` caps the reported hour (a client clock in the future
    /// must not pin `last_hour` there).
    pub fn report(&self, country: &str, report: &pb::ReportRoutes, now_hour: u64) -> usize {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut counted = 0;
        for r in report.routes.iter().take(MAX_ROUTES_PER_REPORT) {
            if !self.known.contains(&r.route) {
                continue;
            }
            let class = CLASSES
                .iter()
                .find(|c| **c == r.failure)
                .copied()
                .unwrap_or("other");
            let entry = counts
                .entry((r.route.clone(), country.to_owned()))
                .or_default();
            *entry.failures.entry(class).or_default() += 1;
            entry.reports += 1;
            entry.last_hour = entry.last_hour.max(r.hour.min(now_hour));
            counted += 1;
        }
        counted
    }

    /// Every route and country with reports, most reported first.
    pub fn view(&self) -> Vec<RouteReport> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<RouteReport> = counts
            .iter()
            .map(|((route, country), counts)| RouteReport {
                route: route.clone(),
                country: country.clone(),
                counts: counts.clone(),
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.counts.reports));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(route: &str, failure: &str, hour: u64) -> pb::BlockedRoute {
        pb::BlockedRoute {
            route: route.into(),
            failure: failure.into(),
            hour,
        }
    }

    #[test]
    fn counts_only_the_servers_routes_per_country() {
        let r = Reachability::new(["tcp://a:1".to_owned(), "tls://a:2".to_owned()]);
        let report = pb::ReportRoutes {
            routes: vec![
                blocked("tcp://a:1", "reset", 10),
                blocked("tls://a:2", "freeze", 11),
                blocked("tcp://evil:1", "reset", 10),
                blocked("tls://a:2", "made-up", 99_999),
            ],
        };
        assert_eq!(r.report("RU", &report, 12), 3);
        assert_eq!(r.report("IR", &report, 12), 3);
        let view = r.view();
        assert_eq!(view.len(), 4);
        let ru_tls = view
            .iter()
            .find(|v| v.route == "tls://a:2" && v.country == "RU")
            .unwrap();
        assert_eq!(ru_tls.counts.reports, 2);
        assert_eq!(ru_tls.counts.failures.get("freeze"), Some(&1));
        assert_eq!(ru_tls.counts.failures.get("other"), Some(&1));
        assert_eq!(ru_tls.counts.last_hour, 12, "future hours are capped");
        assert!(!view.iter().any(|v| v.route.contains("evil")));
    }

    #[test]
    fn a_report_counts_at_most_the_limit() {
        let r = Reachability::new(["tcp://a:1".to_owned()]);
        let report = pb::ReportRoutes {
            routes: vec![blocked("tcp://a:1", "timeout", 1); 1000],
        };
        assert_eq!(r.report("ZZ", &report, 2), MAX_ROUTES_PER_REPORT);
    }
}
