//! The policy's numbers, in one typed struct with defaults taken from Lox
//! (PETS 2023) where Lox has the same rule, and from the simulator where it
//! does not. Every interval is in days.

use serde::{Deserialize, Serialize};

/// Highest trust level. Level 0 is a new member; levels 1 to 4 are earned
/// over time (or, for level 1, by an invitation).
pub const MAX_LEVEL: u8 = 4;

/// The distributor's policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Days a new member (level 0) waits before promotion to level 1.
    pub untrusted_days: u32,
    /// Days at level 1, 2, 3 before promotion to the next level; at level 4,
    /// days between refills of its invitations.
    pub level_interval_days: [u32; 4],
    /// Invitations granted on reaching level 1, 2, 3, 4 (and at each level-4
    /// refill, up to that many).
    pub level_invitations: [u32; 4],
    /// Blockages a member at level 1, 2, 3, 4 may see at its level; one more
    /// demotes it one level. Exceeding it also stops promotion.
    pub level_allowed_blockages: [u32; 4],
    /// Blockages a level-0 member may see; one more suspends it.
    pub untrusted_allowed_blockages: u32,
    /// Whether a blockage at level 0 restarts the member's
    /// `untrusted_days`, as in Lox, where a new user whose open-entry bridge
    /// is blocked starts over. Without it, a censor account that keeps its
    /// relay for a few weeks, burns it, and buys a replacement with the
    /// credit it saved is promoted to a bucket on schedule.
    pub untrusted_restart_on_blockage: bool,
    /// Replacements a member gets while at level 0, in all (within the
    /// weekly limit and paid with credit like any other). A censor account
    /// that keeps its relays for weeks before burning them earns the credit
    /// for a replacement each time; this bounds what it learns before it
    /// could be promoted.
    pub untrusted_replacements: u32,
    /// Ratio of a level-0 member's blame weight for a blocked open-entry
    /// relay to the largest among its holders below which the member is
    /// deemed not at fault (0: never). Blame goes to whoever got the relay
    /// most recently (see `blame_recency_days`): a newcomer seated days
    /// before a censor account joined its relay and burned it carries
    /// little of it. Such a member gets its replacement without credit,
    /// outside `untrusted_replacements`, and the blockage is not counted
    /// against it (its `untrusted_days` still restart), up to
    /// `no_fault_replacements` times: Lox's rejoin, given only when the
    /// block points at someone else.
    pub no_fault_blame_ratio: f64,
    /// Most no-fault replacements a member gets in its life.
    pub no_fault_replacements: u32,
    /// Relays blocked in one country in one day above which no blockage
    /// that day counts as no-fault: a censor that waits and blocks many
    /// relays at once makes who got a relay last meaningless.
    pub no_fault_max_blocks_per_day: u32,
    /// Days after it reaches level 1 (by promotion, or demotion from level
    /// 2) during which a blockage of a member's relays sends it back to
    /// level 0 (members who joined by invitation excepted; 0: no
    /// probation). A censor account that behaved for its first month and
    /// burns the bucket it earned loses the bucket, not one of its four
    /// allowed blockages. Since level 2 comes after 14 days, with the
    /// defaults a member is allowed no blockage at level 1 unless it was
    /// invited: Lox's four apply to invited members only.
    pub probation_days: u32,
    /// Relays confirmed blocked in one country in one day that make it a
    /// *sweep*: a censor that held what its accounts learned and blocks it
    /// all at once (0: never). A sweep tells the distributor more than
    /// single blocks do. Every relay the censor knew was blocked, so a
    /// member that held a relay from before the sweep through
    /// `sweep_settle_days` after it, and the relay still works, is
    /// *cleared*: no account the censor ran held that relay. On the days
    /// of a sweep a blocked relay's blame goes to its holders not yet
    /// cleared, in equal shares (the censor waited, so who got the relay
    /// last means nothing), each at most `sweep_max_blame`. Holders
    /// not cleared at level 0 restart their trust clock without a
    /// blockage counted, and get no replacement paid with credit (every
    /// account the censor ran is among them; so are the honest newcomers
    /// who shared a relay with one, which is what seating by who is
    /// cleared keeps few);
    /// cleared holders get a replacement without credit and without a
    /// blockage counted, within [`Config::no_fault_replacements`].
    /// Newcomers are seated where the fewest members not yet cleared sit,
    /// so that a sweep points at as few of them as possible. The blocks of
    /// the day before the sweep is recognised are judged by the ordinary
    /// rules, but their uncleared level-0 losers not yet replaced get no
    /// paid or no-fault replacement once it is.
    pub sweep_min_blocks: u32,
    /// Most suspicion one sweep adds to one holder of a blocked relay
    /// (below [`Config::ban_suspicion`], one sweep bans no one). A censor
    /// that spared a relay in one sweep, so that its account there was
    /// cleared, and blocks it in the next would otherwise have the newcomer
    /// seated beside that account banned.
    pub sweep_max_blame: f64,
    /// Days after a sweep's first day that its blocks still count as the
    /// sweep's (detection lags by a day or two), and after which the
    /// members whose relays survived it are cleared.
    pub sweep_settle_days: u32,
    /// Days a level-0 member stays suspended after too many blockages.
    pub suspension_days: u32,
    /// Relays a level-0 member gets (one, as in Lox's open-entry buckets).
    pub untrusted_relays: usize,
    /// Relays in a bucket; members at level 1 and above get one bucket.
    pub bucket_size: usize,
    /// A member leaves its bucket for another once this many of the bucket's
    /// relays are blocked in its country (Lox migrates at 2 of 3).
    pub bucket_broken_after: usize,
    /// Relays from a broken bucket a member keeps while they still work.
    pub max_kept_relays: usize,
    /// Most members who see one relay (and so one bucket).
    pub max_members_per_relay: usize,
    /// Newcomers (level-0 members) per open-entry relay above which the
    /// distributor opens more relays to new members (taking them from
    /// unused buckets) rather than crowding them: fewer newcomers per relay
    /// means fewer honest newcomers share a relay with any one censor
    /// account, and sharper blame. One by default: a newcomer alone on its
    /// relay loses it only if it gave it away itself. A newcomer is seated
    /// where newcomers are fewest, beside trusted members if need be: they
    /// have the credit to replace a relay a censor account burns, and
    /// newcomers do not.
    pub open_members_target: usize,
    /// Whether a newcomer is seated, among the open-entry relays, where
    /// the fewest members would be stranded if the relay were blocked:
    /// level-0 members without the credit or the allowance for a
    /// replacement, and members on probation (then where newcomers are
    /// fewest). Whether more relays are opened to new members still counts
    /// every newcomer. Without it, a relay that arrives empty fills with
    /// the day's newcomers, and the censor account among them strands them
    /// all before any earned a replacement; with it, they are mixed with
    /// older newcomers who can be replaced.
    pub seat_by_exposure: bool,
    /// Most *exposed* members (see `seat_by_exposure`: newcomers without
    /// the credit or the allowance for a replacement, members on
    /// probation) on one open-entry relay; an exposed member finds no seat
    /// on a relay that has as many, and waits for one (0: no limit), once
    /// a relay has been blocked in its country. A
    /// censor account seated on a relay strands its exposed members when
    /// it burns it, and they stay cut off; a newcomer that waits a few days
    /// for room is cut off only while it waits. Where relays are scarce
    /// (the first days of a deployment) this trades a short wait for many
    /// against losing some for good.
    pub max_exposed_per_relay: usize,
    /// Most relays ever handed to the open-entry pool (new members), as a
    /// share of all relays; the rest go to buckets. 1.0 sets no limit: the
    /// simulator found that starving new members cost more than the relays
    /// it saved, once replacements cost credit (see BENCHMARKS.md).
    pub open_pool_fraction: f64,
    /// Length of the window in which replacements are counted.
    pub replacement_window_days: u32,
    /// Replacements (relays or buckets handed out because earlier ones were
    /// blocked) per window, for levels 0 to 4.
    pub replacements_per_window: [u32; 5],
    /// Days of credit a replacement costs. A member earns a day of credit
    /// for each day it holds a working relay (as in rBridge, NDSS 2013):
    /// an account whose relays are blocked as soon as it gets them earns
    /// nothing and soon gets nothing more.
    pub replacement_cost_days: f64,
    /// Most credit a member can save, in days.
    pub credit_cap_days: f64,
    /// Replacements a member gets without credit, once in its life: for a
    /// newcomer whose first relay is blocked before it could earn any.
    /// None by default: in the simulator a free replacement was a second
    /// relay for every censor account (about two learned per account, not
    /// one), and honest newcomers rarely need it once each has an
    /// open-entry relay of its own (see `open_members_target`).
    pub free_replacements: u32,
    /// New members per network per day.
    pub network_registrations_per_day: u32,
    /// Relays handed out per network per day.
    pub network_handouts_per_day: u32,
    /// Distinct members of one country who must report a relay unreachable
    /// before it counts as blocked there (fewer if fewer of them use it).
    pub reports_to_confirm: usize,
    /// Distinct clients a day from a country, on average, before a relay's
    /// signal from that country is trusted.
    pub signal_min_baseline: f64,
    /// A day with at most this share of the usual clients from a country
    /// marks the relay blocked there.
    pub signal_drop_ratio: f64,
    /// Weight of a new day in the moving average of clients per country.
    pub signal_smoothing: f64,
    /// Suspicion at which an account is banned. Each blocked relay adds a
    /// total of 1 among the members of the country who saw it, weighted
    /// towards those who got it most recently (see `blame_recency_days`).
    pub ban_suspicion: f64,
    /// A member who got a blocked relay this many days before the block
    /// carries half the blame weight of one who got it that day (weight
    /// h / (h + age)).
    pub blame_recency_days: f64,
    /// Suspicion above which a member is not promoted.
    pub promotion_max_suspicion: f64,
    /// Suspicion halves after this many days.
    pub suspicion_half_life_days: u32,
    /// Suspicion added to a member whose report the relay's own signal
    /// contradicts (clients from its country still arrive).
    pub false_report_suspicion: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            untrusted_days: 30,
            level_interval_days: [14, 28, 56, 84],
            level_invitations: [2, 4, 6, 8],
            level_allowed_blockages: [4, 3, 2, 2],
            untrusted_allowed_blockages: 1,
            untrusted_restart_on_blockage: true,
            untrusted_replacements: 1,
            no_fault_blame_ratio: 0.5,
            no_fault_replacements: 3,
            no_fault_max_blocks_per_day: 2,
            probation_days: 30,
            sweep_min_blocks: 8,
            sweep_settle_days: 2,
            sweep_max_blame: 0.5,
            suspension_days: 30,
            untrusted_relays: 1,
            bucket_size: 3,
            bucket_broken_after: 2,
            max_kept_relays: 2,
            max_members_per_relay: 40,
            open_members_target: 1,
            seat_by_exposure: true,
            max_exposed_per_relay: 4,
            open_pool_fraction: 1.0,
            replacement_window_days: 7,
            replacements_per_window: [1, 2, 3, 3, 3],
            replacement_cost_days: 7.0,
            credit_cap_days: 60.0,
            free_replacements: 0,
            network_registrations_per_day: 200,
            network_handouts_per_day: 2_000,
            reports_to_confirm: 2,
            signal_min_baseline: 8.0,
            signal_drop_ratio: 0.2,
            signal_smoothing: 0.3,
            ban_suspicion: 1.0,
            blame_recency_days: 2.0,
            promotion_max_suspicion: 0.5,
            suspicion_half_life_days: 90,
            false_report_suspicion: 0.25,
        }
    }
}

/// A configuration the distributor cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A count that must be at least one is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A ratio outside its range.
    #[error("{0} must be between 0 and 1")]
    Ratio(&'static str),
    /// `bucket_broken_after` larger than `bucket_size`.
    #[error("bucket_broken_after ({0}) cannot exceed bucket_size ({1})")]
    BrokenAfter(usize, usize),
    /// A suspicion threshold that is not positive.
    #[error("{0} must be greater than 0")]
    Suspicion(&'static str),
}

impl Config {
    /// Checks that the numbers make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (v, name) in [
            (self.untrusted_relays, "untrusted_relays"),
            (self.bucket_size, "bucket_size"),
            (self.bucket_broken_after, "bucket_broken_after"),
            (self.max_members_per_relay, "max_members_per_relay"),
            (self.open_members_target, "open_members_target"),
            (self.reports_to_confirm, "reports_to_confirm"),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (v, name) in [
            (self.replacement_window_days, "replacement_window_days"),
            (self.suspicion_half_life_days, "suspicion_half_life_days"),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (v, name) in [
            (self.open_pool_fraction, "open_pool_fraction"),
            (self.signal_drop_ratio, "signal_drop_ratio"),
            (self.no_fault_blame_ratio, "no_fault_blame_ratio"),
            (self.sweep_max_blame, "sweep_max_blame"),
            (self.signal_smoothing, "signal_smoothing"),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::Ratio(name));
            }
        }
        if self.bucket_broken_after > self.bucket_size {
            return Err(ConfigError::BrokenAfter(
                self.bucket_broken_after,
                self.bucket_size,
            ));
        }
        for (v, name) in [
            (self.blame_recency_days, "blame_recency_days"),
            (self.ban_suspicion, "ban_suspicion"),
            (self.promotion_max_suspicion, "promotion_max_suspicion"),
        ] {
            if v.is_nan() || v <= 0.0 {
                return Err(ConfigError::Suspicion(name));
            }
        }
        Ok(())
    }

    /// Relays a member at `level` is entitled to.
    pub fn relays_for_level(&self, level: u8) -> usize {
        if level == 0 {
            self.untrusted_relays
        } else {
            self.bucket_size
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_issue_numbers_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.untrusted_days, 30);
        assert_eq!(c.level_interval_days, [14, 28, 56, 84]);
        assert_eq!(c.level_invitations, [2, 4, 6, 8]);
        assert_eq!(c.level_allowed_blockages, [4, 3, 2, 2]);
        assert_eq!(c.relays_for_level(0), 1);
        assert_eq!(c.relays_for_level(1), 3);
    }

    #[test]
    fn nonsense_is_refused() {
        let c = Config {
            bucket_size: 0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("bucket_size")));
        let c = Config {
            bucket_broken_after: 4,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::BrokenAfter(4, 3))));
        let c = Config {
            signal_drop_ratio: 1.5,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Ratio(_))));
    }

    #[test]
    fn a_partial_toml_table_takes_defaults_for_the_rest() {
        let c: Config = serde_json::from_str(r#"{"untrusted_days": 7}"#).unwrap();
        assert_eq!(c.untrusted_days, 7);
        assert_eq!(c.bucket_size, 3);
        assert!(serde_json::from_str::<Config>(r#"{"untrusted_dayz": 7}"#).is_err());
    }
}
