//! The semiannual transparency report, computed from the log's entries
//! alone, so that anyone holding the log can recompute it and compare.
//!
//! A request counts in the half-year of the month it was received (the
//! month in its entry). A request under a gag is logged sealed: it counts
//! as received, and as `sealed_pending`, from the moment it is sealed;
//! when its opening is appended, its outcome, jurisdiction, basis and
//! accounts join the counts (of the half-year it was received in) and it
//! leaves `sealed_pending`. An opening that does not match its sealed
//! entry, or names none, is counted in `bad_openings` and otherwise
//! ignored; bytes that are not an entry are counted in `invalid_entries`.
//!
//! The report is a deterministic function of the entries: maps are sorted
//! and the JSON form is canonical (serde_json with sorted maps, no
//! floats), so two honest computations agree byte for byte.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use postern_tlog::entry::{Entry, LegalRequest, Month, Outcome, SealedRequest};

use crate::policy::Reason;

/// A half-year: `2026-H1` (January–June) or `2026-H2` (July–December).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    /// The year.
    pub year: u16,
    /// 1 or 2.
    pub half: u8,
}

/// What was wrong with a period name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a period like 2026-H2")]
pub struct PeriodError(pub String);

impl std::str::FromStr for Period {
    type Err = PeriodError;

    fn from_str(s: &str) -> Result<Period, PeriodError> {
        let err = || PeriodError(s.to_owned());
        let (y, h) = s.split_once("-H").ok_or_else(err)?;
        if y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let year: u16 = y.parse().map_err(|_| err())?;
        let half = match h {
            "1" => 1,
            "2" => 2,
            _ => return Err(err()),
        };
        if !(2000..=9999).contains(&year) {
            return Err(err());
        }
        Ok(Period { year, half })
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-H{}", self.year, self.half)
    }
}

impl Period {
    /// Whether `month` falls in this period.
    pub fn contains(&self, month: Month) -> bool {
        month.year() == self.year && (month.month() <= 6) == (self.half == 1)
    }
}

/// Counts of requests by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests with a known outcome.
    pub requests: u64,
    /// Granted in full.
    pub granted: u64,
    /// Granted in part.
    pub partly_granted: u64,
    /// Refused.
    pub refused: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        self.requests += 1;
        match outcome {
            Outcome::Granted => self.granted += 1,
            Outcome::PartlyGranted(_) => self.partly_granted += 1,
            Outcome::Refused(_) => self.refused += 1,
        }
    }
}

/// A semiannual report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The period, like `2026-H2`.
    pub period: String,
    /// How many log entries it was computed from (the checkpoint's size).
    pub log_size: u64,
    /// Requests received in the period, sealed ones included.
    pub received: u64,
    /// Outcomes of the requests whose details are public.
    pub outcomes: Counts,
    /// Sealed (gagged) requests not yet opened: received, details pending.
    pub sealed_pending: u64,
    /// Refusals by reason.
    pub refused_by_reason: BTreeMap<String, u64>,
    /// Partial grants by reason.
    pub partly_granted_by_reason: BTreeMap<String, u64>,
    /// Accounts named by requests granted in full or in part (an upper
    /// bound on the accounts whose data was disclosed).
    pub accounts_affected: u64,
    /// Per requesting jurisdiction.
    pub by_jurisdiction: BTreeMap<String, Counts>,
    /// Per legal basis cited.
    pub by_legal_basis: BTreeMap<String, Counts>,
    /// Entries that are not valid records (whole log).
    pub invalid_entries: u64,
    /// Openings that contradict or lack their sealed entry (whole log).
    pub bad_openings: u64,
    /// Disclosures made in the period (each for a logged request).
    #[serde(default)]
    pub disclosures: u64,
}

impl Report {
    /// Computes the report for `period` from the log's entries, in log
    /// order from the first.
    pub fn compute<'a>(period: Period, entries: impl IntoIterator<Item = &'a [u8]>) -> Report {
        let mut r = Report {
            period: period.to_string(),
            ..Report::default()
        };
        let mut sealed: HashMap<[u8; 16], (SealedRequest, bool)> = HashMap::new();
        for bytes in entries {
            r.log_size += 1;
            match Entry::decode(bytes) {
                Ok(Entry::LegalRequest(req)) => {
                    if period.contains(req.month) {
                        r.received += 1;
                        r.add_details(&req);
                    }
                }
                Ok(Entry::Sealed(s)) => {
                    if period.contains(s.month) {
                        r.received += 1;
                        r.sealed_pending += 1;
                    }
                    sealed.entry(s.id).or_insert((s, false));
                }
                Ok(Entry::Opening(o)) => match sealed.get_mut(&o.request.id) {
                    Some((s, opened)) if !*opened && o.opens(s) => {
                        *opened = true;
                        if period.contains(s.month) {
                            r.sealed_pending -= 1;
                            r.add_details(&o.request);
                        }
                    }
                    _ => r.bad_openings += 1,
                },
                Ok(Entry::Disclosure(d)) => {
                    if period.contains(d.month) {
                        r.disclosures += 1;
                    }
                }
                Err(_) => r.invalid_entries += 1,
            }
        }
        r
    }

    fn add_details(&mut self, req: &LegalRequest) {
        self.outcomes.add(req.outcome);
        match req.outcome {
            Outcome::Granted => self.accounts_affected += u64::from(req.accounts),
            Outcome::PartlyGranted(code) => {
                self.accounts_affected += u64::from(req.accounts);
                *self
                    .partly_granted_by_reason
                    .entry(Reason::code_name(code))
                    .or_default() += 1;
            }
            Outcome::Refused(code) => {
                *self
                    .refused_by_reason
                    .entry(Reason::code_name(code))
                    .or_default() += 1;
            }
        }
        self.by_jurisdiction
            .entry(req.jurisdiction.as_str().to_owned())
            .or_default()
            .add(req.outcome);
        self.by_legal_basis
            .entry(req.legal_basis.clone())
            .or_default()
            .add(req.outcome);
    }

    /// The canonical JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// Reads the JSON form.
    pub fn from_json(s: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// A plain-text summary, one fact per line, for the body of a signed
    /// note.
    pub fn to_text(&self) -> String {
        let mut t = format!(
            "Postern transparency report {}\nlog size {}\nreceived {}\ngranted {}\npartly granted {}\nrefused {}\nsealed pending {}\naccounts affected {}\ndisclosures {}\n",
            self.period,
            self.log_size,
            self.received,
            self.outcomes.granted,
            self.outcomes.partly_granted,
            self.outcomes.refused,
            self.sealed_pending,
            self.accounts_affected,
            self.disclosures,
        );
        for (reason, n) in &self.refused_by_reason {
            t.push_str(&format!("refused {reason} {n}\n"));
        }
        for (reason, n) in &self.partly_granted_by_reason {
            t.push_str(&format!("partly granted {reason} {n}\n"));
        }
        for (j, c) in &self.by_jurisdiction {
            t.push_str(&format!(
                "jurisdiction {j} {} {} {} {}\n",
                c.requests, c.granted, c.partly_granted, c.refused
            ));
        }
        for (b, c) in &self.by_legal_basis {
            t.push_str(&format!(
                "basis {b} {} {} {} {}\n",
                c.requests, c.granted, c.partly_granted, c.refused
            ));
        }
        t
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A horizontal bar chart as inline SVG: one labelled bar per row.
fn bar_chart(title: &str, rows: &[(String, u64)]) -> String {
    const ROW: u64 = 22;
    const LABEL: u64 = 220;
    const WIDTH: u64 = 360;
    let max = rows.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = ROW * rows.len().max(1) as u64 + 8;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"{}\">\n",
        escape(title),
        LABEL + WIDTH + 60,
        escape(title)
    );
    if rows.is_empty() {
        svg.push_str("<text x=\"0\" y=\"16\">none</text>\n");
    }
    for (i, (label, n)) in rows.iter().enumerate() {
        let y = i as u64 * ROW + 4;
        let w = n * WIDTH / max;
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{LABEL}\" y=\"{y}\" width=\"{w}\" height=\"16\" fill=\"#4a6fa5\"/><text x=\"{}\" y=\"{}\">{n}</text>\n",
            y + 13,
            escape(label),
            LABEL + w + 6,
            y + 13
        ));
    }
    svg.push_str("</svg></figure>\n");
    svg
}

impl Report {
    /// A self-contained HTML page with SVG charts: outcomes, refusals by
    /// reason, requests per jurisdiction and per legal basis.
    pub fn to_html(&self) -> String {
        let mut h = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Postern transparency report {p}</title></head>\n<body>\n<h1>Transparency report {p}</h1>\n<p>Computed from the first {n} entries of the transparency log. Anyone can recompute it: <code>postern transparency verify-report</code>.</p>\n<p>Requests received: {r}. Granted: {g}. Partly granted: {pg}. Refused: {rf}. Sealed (under a gag, details pending): {sp}. Accounts affected: {a}.</p>\n",
            p = escape(&self.period),
            n = self.log_size,
            r = self.received,
            g = self.outcomes.granted,
            pg = self.outcomes.partly_granted,
            rf = self.outcomes.refused,
            sp = self.sealed_pending,
            a = self.accounts_affected,
        );
        h.push_str(&bar_chart(
            "Outcomes",
            &[
                ("granted".to_owned(), self.outcomes.granted),
                ("partly granted".to_owned(), self.outcomes.partly_granted),
                ("refused".to_owned(), self.outcomes.refused),
                ("sealed, pending".to_owned(), self.sealed_pending),
            ],
        ));
        let rows = |m: &BTreeMap<String, u64>| -> Vec<(String, u64)> {
            m.iter().map(|(k, v)| (k.replace('_', " "), *v)).collect()
        };
        h.push_str(&bar_chart(
            "Refusals by reason",
            &rows(&self.refused_by_reason),
        ));
        h.push_str(&bar_chart(
            "Partial grants by reason",
            &rows(&self.partly_granted_by_reason),
        ));
        let counts = |m: &BTreeMap<String, Counts>| -> Vec<(String, u64)> {
            m.iter().map(|(k, c)| (k.clone(), c.requests)).collect()
        };
        h.push_str(&bar_chart(
            "Requests per jurisdiction",
            &counts(&self.by_jurisdiction),
        ));
        h.push_str(&bar_chart(
            "Requests per legal basis",
            &counts(&self.by_legal_basis),
        ));
        if self.invalid_entries + self.bad_openings > 0 {
            h.push_str(&format!(
                "<p><strong>The log holds {} invalid entries and {} bad openings.</strong></p>\n",
                self.invalid_entries, self.bad_openings
            ));
        }
        h.push_str("</body></html>\n");
        h
    }

    /// The fields where `claimed` differs from this (recomputed) report;
    /// empty when they match.
    pub fn differences(&self, claimed: &Report) -> Vec<String> {
        let a = serde_json::to_value(self).expect("a report serialises");
        let b = serde_json::to_value(claimed).expect("a report serialises");
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return vec!["the report".into()];
        };
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: the log gives {v}, the report says {}",
                    b.get(k)
                        .map(|x| x.to_string())
                        .unwrap_or_else(|| "nothing".into())
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_tlog::entry::{
        AuthorityType, Commitment, DataCategories, Jurisdiction, ReasonCode,
    };

    fn req(
        id: u8,
        month: u8,
        j: &str,
        basis: &str,
        outcome: Outcome,
        accounts: u32,
    ) -> LegalRequest {
        LegalRequest {
            id: [id; 16],
            month: Month::new(2026, month).unwrap(),
            jurisdiction: Jurisdiction::new(j).unwrap(),
            authority: AuthorityType::Court,
            legal_basis: basis.into(),
            categories: DataCategories::PHONE_NUMBER,
            outcome,
            accounts,
            order: Commitment([0; 32]),
            account_ids: Commitment([0; 32]),
        }
    }

    fn enc(e: Entry) -> Vec<u8> {
        e.encode().unwrap()
    }

    #[test]
    fn periods_parse_and_contain_their_months() {
        let p: Period = "2026-H2".parse().unwrap();
        assert_eq!(p.to_string(), "2026-H2");
        assert!(p.contains(Month::new(2026, 7).unwrap()));
        assert!(!p.contains(Month::new(2026, 6).unwrap()));
        assert!(!p.contains(Month::new(2027, 12).unwrap()));
        for bad in ["2026-H3", "2026H2", "26-H1", "2026-H", "+026-H1", ""] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_report_counts_outcomes_reasons_jurisdictions_and_gags() {
        let granted = req(1, 8, "DE", "terrorism", Outcome::Granted, 1);
        let refused_ru = req(
            2,
            9,
            "RU",
            "extremism",
            Outcome::Refused(ReasonCode::DENIED_JURISDICTION),
            3,
        );
        let refused_content = req(
            3,
            9,
            "DE",
            "terrorism",
            Outcome::Refused(ReasonCode::CATEGORY_NEVER_DISCLOSED),
            1,
        );
        let partly = req(
            4,
            10,
            "FR",
            "terrorism",
            Outcome::PartlyGranted(ReasonCode::NO_DATA),
            2,
        );
        let earlier = req(5, 3, "DE", "terrorism", Outcome::Granted, 1);
        let gagged = req(6, 11, "DE", "terrorism", Outcome::Granted, 1);
        let (sealed, opening) = gagged.seal().unwrap();
        let gagged2 = req(
            7,
            12,
            "FR",
            "terrorism",
            Outcome::Refused(ReasonCode::INVALID_ORDER),
            1,
        );
        let (sealed2, _never_opened) = gagged2.seal().unwrap();
        let mut forged = opening.clone();
        forged.request.outcome = Outcome::Refused(ReasonCode::OVERBROAD);

        let mut log: Vec<Vec<u8>> = [
            Entry::LegalRequest(earlier),
            Entry::LegalRequest(granted),
            Entry::LegalRequest(refused_ru),
            Entry::Sealed(sealed),
            Entry::LegalRequest(refused_content),
            Entry::LegalRequest(partly),
            Entry::Sealed(sealed2),
        ]
        .into_iter()
        .map(enc)
        .collect();
        log.push(b"\x01\x63".to_vec());
        let p: Period = "2026-H2".parse().unwrap();

        // Before the gag lapses: the sealed requests count, without details.
        let before = Report::compute(p, log.iter().map(Vec::as_slice));
        assert_eq!(before.received, 6);
        assert_eq!(before.sealed_pending, 2);
        assert_eq!(
            before.outcomes,
            Counts {
                requests: 4,
                granted: 1,
                partly_granted: 1,
                refused: 2
            }
        );
        assert_eq!(before.invalid_entries, 1);

        // The forged opening is rejected; the true one fills in the details.
        log.push(enc(Entry::Opening(forged)));
        log.push(enc(Entry::Opening(opening.clone())));
        log.push(enc(Entry::Opening(opening)));
        let after = Report::compute(p, log.iter().map(Vec::as_slice));
        assert_eq!(after.received, 6);
        assert_eq!(after.sealed_pending, 1);
        assert_eq!(
            after.bad_openings, 2,
            "the forged opening and the second opening"
        );
        assert_eq!(
            after.outcomes,
            Counts {
                requests: 5,
                granted: 2,
                partly_granted: 1,
                refused: 2
            }
        );
        assert_eq!(after.accounts_affected, 1 + 2 + 1);
        assert_eq!(after.refused_by_reason["jurisdiction_denied"], 1);
        assert_eq!(after.refused_by_reason["category_never_disclosed"], 1);
        assert_eq!(after.partly_granted_by_reason["unknown_account"], 1);
        assert_eq!(
            after.by_jurisdiction["DE"],
            Counts {
                requests: 3,
                granted: 2,
                partly_granted: 0,
                refused: 1
            }
        );
        assert_eq!(after.by_legal_basis["extremism"].refused, 1);
        assert_eq!(after.log_size, 11);

        // The first half-year sees only the March request.
        let h1 = Report::compute("2026-H1".parse().unwrap(), log.iter().map(Vec::as_slice));
        assert_eq!((h1.received, h1.outcomes.granted), (1, 1));

        // Deterministic, and the JSON round-trips.
        let again = Report::compute(p, log.iter().map(Vec::as_slice));
        assert_eq!(again.to_json(), after.to_json());
        assert_eq!(Report::from_json(&after.to_json()).unwrap(), after);
        assert!(after.to_text().contains("refused jurisdiction_denied 1\n"));

        // The page names every count and escapes what the log says.
        let html = after.to_html();
        assert!(html.contains("Refusals by reason") && html.contains("jurisdiction denied"));
        assert!(html.contains("<svg") && html.ends_with("</html>\n"));
        let mut hostile = after.clone();
        hostile
            .by_legal_basis
            .insert("<script>".into(), Counts::default());
        assert!(!hostile.to_html().contains("<script>"));

        // A tampered report is caught field by field.
        assert!(after.differences(&again).is_empty());
        let mut claimed = after.clone();
        claimed.outcomes.granted -= 1;
        claimed.received -= 1;
        let diffs = after.differences(&claimed);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(
            diffs
                .iter()
                .any(|d| d.starts_with("received: the log gives 6"))
        );
    }
}
