//! One test per rule, then property tests over random sequences of calls.

use proptest::prelude::*;

use super::*;

fn ru() -> Country {
    Country::new("RU").unwrap()
}

fn day(d: u64) -> Time {
    Time::from_days(d)
}

/// A distributor with `relays` relays (ids 0..relays) on distinct networks.
fn with_relays(config: Config, relays: u64) -> Distributor {
    let mut d = Distributor::new(config, 42).unwrap();
    for r in 0..relays {
        d.add_relay(RelayId(r), NetworkId(1000 + r), day(0))
            .unwrap();
    }
    d
}

fn join(d: &mut Distributor, m: u64, now: Time) -> Vec<RelayId> {
    d.register_member(MemberId(m), ru(), NetworkId(m), now)
        .unwrap();
    d.assign(MemberId(m), now).unwrap().relays
}

/// A config where blame never bans, to test the other rules on their own.
fn no_bans() -> Config {
    Config {
        ban_suspicion: 1e9,
        promotion_max_suspicion: 1e9,
        ..Config::default()
    }
}

/// A config where up to ten new members share an open-entry relay.
fn shared() -> Config {
    Config {
        open_members_target: 10,
        ..Config::default()
    }
}

/// Blocks `relay` in Russia through the relay's signal (a healthy day, then
/// none).
fn block(d: &mut Distributor, relay: RelayId, now: Time) -> Vec<Decision> {
    d.relay_signal(relay, ru(), 10, now).unwrap();
    d.relay_signal(relay, ru(), 0, now).unwrap()
}

#[test]
fn a_new_member_gets_one_relay_and_three_after_thirty_days() {
    let mut d = with_relays(Config::default(), 12);
    assert_eq!(join(&mut d, 1, day(0)).len(), 1);
    let a = d.assign(MemberId(1), day(29)).unwrap();
    assert_eq!((a.level, a.relays.len()), (0, 1));
    let a = d.assign(MemberId(1), day(30)).unwrap();
    assert_eq!((a.level, a.relays.len()), (1, 3));
    assert!(a.decisions.contains(&Decision::Promoted {
        member: MemberId(1),
        level: 1
    }));
}

#[test]
fn levels_follow_the_intervals_14_28_56() {
    let mut d = with_relays(Config::default(), 12);
    join(&mut d, 1, day(0));
    let mut t = 30;
    assert_eq!(d.assign(MemberId(1), day(t)).unwrap().level, 1);
    for (interval, level) in [(14, 2), (28, 3), (56, 4)] {
        assert_eq!(
            d.assign(MemberId(1), day(t + interval - 1)).unwrap().level,
            level - 1
        );
        t += interval;
        assert_eq!(d.assign(MemberId(1), day(t)).unwrap().level, level);
    }
    assert_eq!(
        d.assign(MemberId(1), day(t + 1000)).unwrap().level,
        MAX_LEVEL
    );
}

#[test]
fn invitations_are_granted_per_level_and_refilled_at_level_4() {
    let mut d = with_relays(Config::default(), 12);
    join(&mut d, 1, day(0));
    let now = day(0);
    assert_eq!(
        d.create_invite(MemberId(1), InviteCode([1; 16]), now),
        Err(DistributorError::NotTrusted(MemberId(1)))
    );
    let mut t = 30;
    d.assign(MemberId(1), day(t)).unwrap();
    assert_eq!(d.member(MemberId(1), day(t)).unwrap().invitations, 2);
    for (interval, total) in [(14, 6), (28, 12), (56, 20)] {
        t += interval;
        d.assign(MemberId(1), day(t)).unwrap();
        assert_eq!(d.member(MemberId(1), day(t)).unwrap().invitations, total);
    }
    for i in 0..20u8 {
        d.create_invite(MemberId(1), InviteCode([i; 16]), day(t))
            .unwrap();
    }
    assert_eq!(
        d.create_invite(MemberId(1), InviteCode([99; 16]), day(t)),
        Err(DistributorError::NoInvitations(MemberId(1)))
    );
    d.assign(MemberId(1), day(t + 83)).unwrap();
    assert_eq!(d.member(MemberId(1), day(t + 83)).unwrap().invitations, 0);
    d.assign(MemberId(1), day(t + 84)).unwrap();
    assert_eq!(d.member(MemberId(1), day(t + 84)).unwrap().invitations, 8);
}

#[test]
fn an_invited_member_starts_at_level_1_in_its_inviters_bucket() {
    let mut d = with_relays(Config::default(), 12);
    join(&mut d, 1, day(0));
    let inviter = d.assign(MemberId(1), day(30)).unwrap().relays;
    let code = InviteCode([5; 16]);
    d.create_invite(MemberId(1), code, day(30)).unwrap();
    d.redeem_invite(code, MemberId(2), ru(), NetworkId(2), day(31))
        .unwrap();
    let a = d.assign(MemberId(2), day(31)).unwrap();
    assert_eq!(a.level, 1);
    assert_eq!(a.relays, inviter);
    assert_eq!(
        d.member(MemberId(2), day(31)).unwrap().invited_by,
        Some(MemberId(1))
    );
    // Invitees do not invite before earning a level of their own.
    assert_eq!(d.member(MemberId(2), day(31)).unwrap().invitations, 0);
    assert_eq!(
        d.redeem_invite(code, MemberId(3), ru(), NetworkId(3), day(31)),
        Err(DistributorError::UnknownInvite)
    );
}

#[test]
fn a_relay_blocked_for_a_member_is_replaced() {
    let cfg = Config {
        free_replacements: 1,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 12);
    let first = join(&mut d, 1, day(0))[0];
    let decisions = block(&mut d, first, day(1));
    assert!(decisions.contains(&Decision::RelayBlocked {
        relay: first,
        country: ru()
    }));
    assert!(decisions.contains(&Decision::Revoked {
        member: MemberId(1),
        relay: first
    }));
    let now = d.assign(MemberId(1), day(1)).unwrap().relays;
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], first);
    assert!(d.is_blocked(first, ru()));
    // Elsewhere the relay still works.
    assert!(!d.is_blocked(first, Country::new("IR").unwrap()));
}

#[test]
fn level_1_tolerates_four_blockages_and_the_fifth_demotes() {
    // Lox's rule on its own, without the first month's probation.
    let cfg = Config {
        probation_days: 0,
        replacements_per_window: [9; 5],
        max_kept_relays: 0,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 60);
    join(&mut d, 1, day(0));
    let mut t = 30;
    d.assign(MemberId(1), day(t)).unwrap();
    for n in 1..=5 {
        t += 1;
        let relays = d.assign(MemberId(1), day(t)).unwrap().relays;
        assert_eq!(relays.len(), 3, "blockage {n}");
        // Two of three blocked: the bucket is broken.
        let mut decisions = block(&mut d, relays[0], day(t));
        decisions.extend(block(&mut d, relays[1], day(t)));
        let demoted = decisions
            .iter()
            .any(|x| matches!(x, Decision::Demoted { .. }));
        assert_eq!(demoted, n == 5, "blockage {n}");
        assert_eq!(d.member(MemberId(1), day(t)).unwrap().blockages, n % 5);
    }
    assert_eq!(d.assign(MemberId(1), day(t)).unwrap().level, 0);
}

#[test]
fn allowed_blockages_shrink_with_level() {
    // At level 3 two blockages are allowed and the third demotes.
    let cfg = Config {
        replacements_per_window: [9; 5],
        max_kept_relays: 0,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 60);
    join(&mut d, 1, day(0));
    let mut t = 30 + 14 + 28;
    assert_eq!(d.assign(MemberId(1), day(30)).unwrap().level, 1);
    assert_eq!(d.assign(MemberId(1), day(44)).unwrap().level, 2);
    assert_eq!(d.assign(MemberId(1), day(t)).unwrap().level, 3);
    for n in 1..=3 {
        t += 1;
        let relays = d.assign(MemberId(1), day(t)).unwrap().relays;
        let mut decisions = block(&mut d, relays[0], day(t));
        decisions.extend(block(&mut d, relays[1], day(t)));
        let demoted = decisions.contains(&Decision::Demoted {
            member: MemberId(1),
            level: 2,
        });
        assert_eq!(demoted, n == 3, "blockage {n}");
    }
}

#[test]
fn blockages_stop_promotion() {
    let cfg = Config {
        replacement_cost_days: 0.0,
        untrusted_replacements: 100,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 12);
    let r = join(&mut d, 1, day(0))[0];
    block(&mut d, r, day(1));
    let r = d.assign(MemberId(1), day(10)).unwrap().relays[0];
    // The second blockage at level 0 suspends (one is allowed).
    let decisions = block(&mut d, r, day(11));
    assert!(
        decisions
            .iter()
            .any(|x| matches!(x, Decision::Suspended { .. }))
    );
    assert!(matches!(
        d.assign(MemberId(1), day(12)),
        Err(DistributorError::Suspended { .. })
    ));
    // After the suspension the member is back at level 0 and must earn
    // level 1 again.
    let a = d.assign(MemberId(1), day(41)).unwrap();
    assert_eq!((a.level, a.relays.len()), (0, 1));
    assert_eq!(d.assign(MemberId(1), day(70)).unwrap().level, 0);
    assert_eq!(d.assign(MemberId(1), day(71)).unwrap().level, 1);
}

#[test]
fn a_blockage_at_level_0_restarts_the_thirty_days() {
    for restart in [true, false] {
        let cfg = Config {
            untrusted_restart_on_blockage: restart,
            ..no_bans()
        };
        let mut d = with_relays(cfg, 12);
        let r = join(&mut d, 1, day(0))[0];
        d.assign(MemberId(1), day(10)).unwrap();
        // Three weeks of credit buy a replacement on day 20.
        block(&mut d, r, day(20));
        assert_eq!(d.assign(MemberId(1), day(20)).unwrap().relays.len(), 1);
        let on_day_30 = d.assign(MemberId(1), day(30)).unwrap().level;
        assert_eq!(on_day_30, if restart { 0 } else { 1 });
        // Thirty days after the blockage (or 14 more at level 1).
        let on_day_50 = d.assign(MemberId(1), day(50)).unwrap().level;
        assert_eq!(on_day_50, if restart { 1 } else { 2 });
    }
}

#[test]
fn a_member_gets_one_replacement_at_level_0_in_all() {
    let cfg = Config {
        untrusted_allowed_blockages: 100,
        untrusted_days: 1000,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 12);
    let r = join(&mut d, 1, day(0))[0];
    d.assign(MemberId(1), day(10)).unwrap();
    block(&mut d, r, day(20));
    let r = d.assign(MemberId(1), day(20)).unwrap().relays[0];
    d.assign(MemberId(1), day(30)).unwrap();
    // Credit for another, weeks later, but no second one at level 0.
    block(&mut d, r, day(40));
    assert!(d.assign(MemberId(1), day(40)).unwrap().relays.is_empty());
    assert!(d.assign(MemberId(1), day(90)).unwrap().relays.is_empty());
}

#[test]
fn a_blockage_in_the_first_month_at_level_1_sends_a_member_back_to_level_0() {
    for probation in [30, 0] {
        let cfg = Config {
            probation_days: probation,
            ..no_bans()
        };
        let mut d = with_relays(cfg, 12);
        join(&mut d, 1, day(0));
        let a = d.assign(MemberId(1), day(30)).unwrap();
        assert_eq!((a.level, a.relays.len()), (1, 3));
        let decisions = block(&mut d, a.relays[0], day(40));
        let demoted = decisions.contains(&Decision::Demoted {
            member: MemberId(1),
            level: 0,
        });
        assert_eq!(demoted, probation > 0, "probation {probation}");
        let level = d.member(MemberId(1), day(40)).unwrap().level;
        assert_eq!(level, if probation > 0 { 0 } else { 1 });
    }
}

#[test]
fn probation_ends_and_spares_invited_members() {
    let mut d = with_relays(no_bans(), 12);
    join(&mut d, 1, day(0));
    let a = d.assign(MemberId(1), day(30)).unwrap();
    let code = InviteCode([7; 16]);
    d.create_invite(MemberId(1), code, day(30)).unwrap();
    d.redeem_invite(code, MemberId(2), ru(), NetworkId(2), day(30))
        .unwrap();
    assert_eq!(d.assign(MemberId(2), day(30)).unwrap().level, 1);
    // Past its month at level 1, member 1 sees an ordinary blockage; the
    // invited member, on its first day, is not on probation.
    let decisions = block(&mut d, a.relays[0], day(61));
    assert!(
        !decisions
            .iter()
            .any(|x| matches!(x, Decision::Demoted { .. })),
        "{decisions:?}"
    );
    assert_eq!(d.member(MemberId(1), day(61)).unwrap().level, 1);
    assert_eq!(d.member(MemberId(2), day(61)).unwrap().level, 1);
}

#[test]
fn replacements_are_rate_limited_per_account() {
    let cfg = Config {
        untrusted_allowed_blockages: 100,
        untrusted_replacements: 100,
        replacement_cost_days: 0.0,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 12);
    let r = join(&mut d, 1, day(0))[0];
    block(&mut d, r, day(1));
    let r = d.assign(MemberId(1), day(1)).unwrap().relays[0];
    block(&mut d, r, day(2));
    // One replacement a week at level 0: the second waits.
    assert!(d.assign(MemberId(1), day(2)).unwrap().relays.is_empty());
    assert!(d.assign(MemberId(1), day(7)).unwrap().relays.is_empty());
    assert_eq!(d.assign(MemberId(1), day(8)).unwrap().relays.len(), 1);
}

#[test]
fn replacements_cost_credit_earned_with_working_relays() {
    let cfg = Config {
        untrusted_allowed_blockages: 100,
        replacements_per_window: [9; 5],
        free_replacements: 1,
        untrusted_replacements: 100,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 12);
    // Blocked the day after it was handed out: the free replacement.
    let r = join(&mut d, 1, day(0))[0];
    block(&mut d, r, day(1));
    let r = d.assign(MemberId(1), day(1)).unwrap().relays[0];
    // Blocked again a day later: one day of credit buys nothing.
    block(&mut d, r, day(2));
    assert!(d.assign(MemberId(1), day(30)).unwrap().relays.is_empty());
    // A member whose relay worked for ten days can replace it.
    let r = join(&mut d, 2, day(0))[0];
    d.assign(MemberId(2), day(5)).unwrap();
    block(&mut d, r, day(10));
    let r = d.assign(MemberId(2), day(10)).unwrap().relays[0];
    d.assign(MemberId(2), day(20)).unwrap();
    block(&mut d, r, day(20));
    assert_eq!(d.assign(MemberId(2), day(20)).unwrap().relays.len(), 1);
}

#[test]
fn a_member_holding_nothing_is_told_why() {
    let why = |d: &Distributor, m: u64, t: u64| d.member(MemberId(m), day(t)).unwrap().unserved;
    let cfg = Config {
        untrusted_allowed_blockages: 100,
        ..no_bans()
    };
    let mut d = with_relays(cfg.clone(), 1);
    let r = join(&mut d, 1, day(0))[0];
    assert_eq!(why(&d, 1, 0), None);
    // With room for one member on the only relay, a second newcomer waits.
    let mut capped = with_relays(
        Config {
            max_members_per_relay: 1,
            ..cfg.clone()
        },
        1,
    );
    join(&mut capped, 1, day(0));
    assert!(join(&mut capped, 2, day(0)).is_empty());
    assert_eq!(why(&capped, 2, 0), Some(Unserved::Waiting));
    // Blocked the next day: no credit for a replacement, for good.
    block(&mut d, r, day(1));
    d.assign(MemberId(1), day(1)).unwrap();
    assert_eq!(why(&d, 1, 1), Some(Unserved::NoCredit));
    assert_eq!(why(&d, 1, 60), Some(Unserved::NoCredit));
    assert!(d.assign(MemberId(1), day(60)).unwrap().relays.is_empty());

    // A week of credit, but no relay to replace it with.
    let mut d = with_relays(cfg.clone(), 1);
    let r = join(&mut d, 1, day(0))[0];
    d.assign(MemberId(1), day(5)).unwrap();
    block(&mut d, r, day(10));
    d.assign(MemberId(1), day(10)).unwrap();
    assert_eq!(why(&d, 1, 10), Some(Unserved::NoRoom));
    // A relay arrives: the replacement comes.
    d.add_relay(RelayId(9), NetworkId(9), day(11)).unwrap();
    assert_eq!(
        d.assign(MemberId(1), day(11)).unwrap().relays,
        vec![RelayId(9)]
    );
    assert_eq!(why(&d, 1, 11), None);
    // Blocked again weeks later: a new member gets one replacement in all.
    d.assign(MemberId(1), day(25)).unwrap();
    block(&mut d, RelayId(9), day(25));
    d.add_relay(RelayId(10), NetworkId(10), day(25)).unwrap();
    assert!(d.assign(MemberId(1), day(25)).unwrap().relays.is_empty());
    assert_eq!(why(&d, 1, 25), Some(Unserved::NoAllowance));

    // Replacements free and unlimited but one a week: the second waits.
    let mut d = with_relays(
        Config {
            untrusted_replacements: 100,
            replacement_cost_days: 0.0,
            ..cfg.clone()
        },
        12,
    );
    let r = join(&mut d, 1, day(0))[0];
    block(&mut d, r, day(1));
    let r = d.assign(MemberId(1), day(1)).unwrap().relays[0];
    block(&mut d, r, day(2));
    assert!(d.assign(MemberId(1), day(2)).unwrap().relays.is_empty());
    assert_eq!(why(&d, 1, 2), Some(Unserved::RateLimited));
    assert_eq!(d.assign(MemberId(1), day(8)).unwrap().relays.len(), 1);

    // Too many blockages at level 0: suspended.
    let mut d = with_relays(no_bans(), 12);
    let r = join(&mut d, 1, day(0))[0];
    d.assign(MemberId(1), day(10)).unwrap();
    block(&mut d, r, day(10));
    let r = d.assign(MemberId(1), day(10)).unwrap().relays[0];
    block(&mut d, r, day(11));
    assert_eq!(why(&d, 1, 11), Some(Unserved::Suspended));
    for w in [
        Unserved::Banned,
        Unserved::Suspended,
        Unserved::Waiting,
        Unserved::NoRoom,
        Unserved::NoCredit,
        Unserved::NoAllowance,
        Unserved::RateLimited,
    ] {
        assert!(!w.name().is_empty() && !w.explain().is_empty());
    }
}

#[test]
fn registrations_and_hand_outs_are_rate_limited_per_network() {
    let cfg = Config {
        network_registrations_per_day: 2,
        network_handouts_per_day: 1,
        ..Config::default()
    };
    let mut d = with_relays(cfg, 12);
    let net = NetworkId(7);
    d.register_member(MemberId(1), ru(), net, day(0)).unwrap();
    d.register_member(MemberId(2), ru(), net, day(0)).unwrap();
    assert_eq!(
        d.register_member(MemberId(3), ru(), net, day(0)),
        Err(DistributorError::NetworkLimit(net))
    );
    assert_eq!(d.assign(MemberId(1), day(0)).unwrap().relays.len(), 1);
    assert!(d.assign(MemberId(2), day(0)).unwrap().relays.is_empty());
    // A new day, new allowances.
    assert_eq!(d.assign(MemberId(2), day(1)).unwrap().relays.len(), 1);
    d.register_member(MemberId(3), ru(), net, day(1)).unwrap();
}

#[test]
fn no_relay_is_seen_by_more_members_than_the_cap() {
    let cfg = Config {
        max_members_per_relay: 2,
        open_pool_fraction: 1.0,
        ..Config::default()
    };
    let mut d = with_relays(cfg, 1);
    assert_eq!(join(&mut d, 1, day(0)).len(), 1);
    assert_eq!(join(&mut d, 2, day(0)).len(), 1);
    assert!(join(&mut d, 3, day(0)).is_empty());
    assert_eq!(d.relay_health()[0].members, 2);
}

#[test]
fn new_members_are_spread_over_relays_before_sharing() {
    let cfg = Config {
        open_pool_fraction: 0.5,
        open_members_target: 4,
        ..Config::default()
    };
    let mut d = with_relays(cfg, 12);
    let mut seen = BTreeSet::new();
    for m in 0..8 {
        seen.insert(join(&mut d, m, day(0))[0]);
    }
    // Relays from unused buckets open up rather than crowding one relay.
    assert!(seen.len() >= 2, "{seen:?}");
    let crowd = d.relay_health().iter().map(|h| h.members).max().unwrap();
    assert!(crowd <= 4);
}

#[test]
fn by_default_each_new_member_has_an_open_entry_relay_of_its_own() {
    // Twelve relays: the first open, three buckets of three, two spares
    // waiting for a third.
    let mut d = with_relays(Config::default(), 12);
    let mut seen = BTreeSet::new();
    for m in 0..10 {
        let relays = join(&mut d, m, day(0));
        assert_eq!(relays.len(), 1);
        assert!(seen.insert(relays[0]), "member {m} shares {:?}", relays[0]);
    }
    // Once every open relay serves a newcomer, they share.
    assert!(seen.contains(&join(&mut d, 10, day(0))[0]));
}

#[test]
fn a_newcomer_sits_beside_trusted_members_rather_than_other_newcomers() {
    let cfg = Config {
        open_members_target: 2,
        seat_by_exposure: false,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 1);
    let r0 = join(&mut d, 1, day(0))[0];
    assert_eq!(join(&mut d, 4, day(0)), vec![r0]);
    d.add_relay(RelayId(1), NetworkId(1001), day(0)).unwrap();
    assert_eq!(join(&mut d, 2, day(0)), vec![RelayId(1)]);
    // Members 1 and 4 are trusted now; member 2 is still new.
    for m in [1, 4] {
        assert_eq!(d.assign(MemberId(m), day(30)).unwrap().level, 1);
    }
    // Relay 0 has two members, relay 1 one, but relay 1's is a newcomer.
    assert_eq!(join(&mut d, 3, day(30)), vec![r0]);
}

#[test]
fn a_newcomer_sits_beside_newcomers_who_could_be_replaced() {
    // Relay 0: two newcomers with nine days of credit, enough for a
    // replacement. Relay 1: one newcomer with none. A censor account seated
    // beside the latter would leave it with nothing.
    let seat = |by_exposure: bool| {
        let cfg = Config {
            open_members_target: 2,
            seat_by_exposure: by_exposure,
            ..no_bans()
        };
        let mut d = with_relays(cfg, 1);
        assert_eq!(join(&mut d, 1, day(0)), vec![RelayId(0)]);
        assert_eq!(join(&mut d, 2, day(0)), vec![RelayId(0)]);
        d.add_relay(RelayId(1), NetworkId(1001), day(0)).unwrap();
        assert_eq!(join(&mut d, 3, day(9)), vec![RelayId(1)]);
        join(&mut d, 4, day(9))
    };
    assert!(Config::default().seat_by_exposure);
    assert_eq!(seat(true), vec![RelayId(0)]);
    // Counting every newcomer, relay 1 has fewer.
    assert_eq!(seat(false), vec![RelayId(1)]);
}

/// Member 1 holds relay 0 from day 0, member 2 from day 5, when relay 0 is
/// blocked; relay 1 is free. Returns what each then gets.
fn blocked_after_a_late_arrival(cfg: Config) -> (Vec<RelayId>, Vec<RelayId>) {
    let mut d = with_relays(
        Config {
            open_members_target: 2,
            ..cfg
        },
        1,
    );
    assert_eq!(join(&mut d, 1, day(0)), vec![RelayId(0)]);
    assert_eq!(join(&mut d, 2, day(5)), vec![RelayId(0)]);
    d.add_relay(RelayId(1), NetworkId(1001), day(5)).unwrap();
    block(&mut d, RelayId(0), day(5));
    let first = d.assign(MemberId(1), day(5)).unwrap().relays;
    let second = d.assign(MemberId(2), day(5)).unwrap().relays;
    (first, second)
}

#[test]
fn a_newcomer_not_at_fault_for_a_blockage_gets_a_replacement_without_credit() {
    // Member 1 carries 2/7 of member 2's blame weight and has five days of
    // credit, not the seven a replacement costs.
    let (first, second) = blocked_after_a_late_arrival(no_bans());
    assert_eq!(first, vec![RelayId(1)]);
    assert!(second.is_empty(), "{second:?}");
    let off = Config {
        no_fault_blame_ratio: 0.0,
        ..no_bans()
    };
    assert_eq!(blocked_after_a_late_arrival(off), (vec![], vec![]));
}

#[test]
fn no_blockage_is_no_fault_on_a_day_of_many() {
    let cfg = Config {
        no_fault_max_blocks_per_day: 0,
        ..no_bans()
    };
    assert_eq!(blocked_after_a_late_arrival(cfg), (vec![], vec![]));
}

#[test]
fn no_fault_replacements_are_limited() {
    let cfg = Config {
        no_fault_replacements: 0,
        ..no_bans()
    };
    assert_eq!(blocked_after_a_late_arrival(cfg), (vec![], vec![]));
}

/// Four members alone on four relays; two of them are blocked on day 10
/// (a sweep when `sweep_min_blocks` is 2). Member 5 joins on day 20 beside
/// one of the two survivors' holders, member 6 alone on a new relay; on
/// day 40 both their relays are blocked. Returns the distributor, the
/// holder member 5 sat beside, and the day-40 decisions.
fn a_sweep_then_another(cfg: Config) -> (Distributor, MemberId, Vec<Decision>) {
    let mut d = with_relays(cfg, 4);
    let mut seat = BTreeMap::new();
    for m in 1..=4 {
        let got = join(&mut d, m, day(0));
        assert_eq!(got.len(), 1);
        assert!(seat.insert(got[0], MemberId(m)).is_none(), "own relays");
    }
    let relay_of = |m: u64| *seat.iter().find(|(_, o)| o.0 == m).unwrap().0;
    block(&mut d, relay_of(1), day(10));
    block(&mut d, relay_of(2), day(10));
    let fifth = join(&mut d, 5, day(20));
    assert_eq!(fifth.len(), 1, "member 5 is seated");
    let beside = seat[&fifth[0]];
    assert!(beside == MemberId(3) || beside == MemberId(4));
    // A bucket's worth of new relays, opened to newcomers as needed.
    for r in 10..13 {
        d.add_relay(RelayId(r), NetworkId(2000 + r), day(20))
            .unwrap();
    }
    let sixth = join(&mut d, 6, day(20));
    assert!(
        sixth.len() == 1 && sixth[0].0 >= 10,
        "member 6 alone on a new relay: {sixth:?}"
    );
    for m in [3, 4, 5] {
        d.assign(MemberId(m), day(30)).unwrap();
    }
    let mut decisions = block(&mut d, sixth[0], day(40));
    decisions.extend(block(&mut d, fifth[0], day(40)));
    (d, beside, decisions)
}

#[test]
fn a_sweep_clears_the_members_whose_relays_it_spared() {
    let cfg = Config {
        sweep_min_blocks: 2,
        ..Config::default()
    };
    let (d, _, _) = a_sweep_then_another(cfg.clone());
    for m in [3, 4] {
        let view = d.member(MemberId(m), day(40)).unwrap();
        assert_eq!(view.cleared_at, Some(day(10)), "member {m}");
    }
    // Joined after the sweep: not cleared by it.
    assert_eq!(d.member(MemberId(5), day(40)).unwrap().cleared_at, None);
    let off = Config {
        sweep_min_blocks: 0,
        ..cfg
    };
    let (d, _, _) = a_sweep_then_another(off);
    assert_eq!(d.member(MemberId(3), day(40)).unwrap().cleared_at, None);
}

#[test]
fn in_a_sweep_the_blame_falls_on_the_member_not_cleared() {
    let cfg = Config {
        sweep_min_blocks: 2,
        ..Config::default()
    };
    let (mut d, beside, decisions) = a_sweep_then_another(cfg.clone());
    // Member 5 carries all the blame, up to `sweep_max_blame`, and gets
    // nothing more.
    let five = d.member(MemberId(5), day(40)).unwrap();
    assert_eq!(five.suspicion, 0.5);
    assert!(d.assign(MemberId(5), day(40)).unwrap().relays.is_empty());
    // With the whole unit of blame, it is banned.
    let (_, _, whole) = a_sweep_then_another(Config {
        sweep_max_blame: 1.0,
        ..cfg.clone()
    });
    assert!(
        whole.contains(&Decision::Banned {
            member: MemberId(5)
        }),
        "{whole:?}"
    );
    assert!(!decisions.contains(&Decision::Banned {
        member: MemberId(5)
    }));
    // The cleared member beside it keeps its level (it would be on
    // probation) and gets another relay at once.
    let view = d.member(beside, day(40)).unwrap();
    assert_eq!((view.level, view.blockages, view.suspicion), (1, 0, 0.0));
    assert_eq!(d.assign(beside, day(40)).unwrap().relays.len(), 1);

    // Without the rule, blame goes by recency (member 5 carries about
    // two thirds and keeps its replacement), and the member beside it goes
    // back to level 0.
    let off = Config {
        sweep_min_blocks: 0,
        ..cfg
    };
    let (mut d, beside, decisions) = a_sweep_then_another(off);
    assert!(!decisions.contains(&Decision::Banned {
        member: MemberId(5)
    }));
    assert_eq!(d.member(beside, day(40)).unwrap().level, 0);
    assert_eq!(d.assign(MemberId(5), day(40)).unwrap().relays.len(), 1);
}

/// Members 1–4 alone on relays 0–3; relays 0 and 1 are blocked on day 10
/// (a sweep: 3 and 4 are cleared). Members 5, 6 and 7 join on day 20, two
/// of them beside the same cleared member. On day 40 relays 2 and 3 are
/// blocked (the shared one first or second), three new relays having
/// arrived.
/// Returns the two newcomers
/// that shared a relay, and what each then gets.
fn two_newcomers_in_a_sweep(cfg: Config, shared_first: bool) -> Vec<(MemberId, Vec<RelayId>)> {
    let mut d = with_relays(cfg, 4);
    for m in 1..=4 {
        assert_eq!(join(&mut d, m, day(0)).len(), 1);
    }
    let holder = |d: &Distributor, m: u64| d.member(MemberId(m), day(0)).unwrap().relays[0];
    let (r1, r2) = (holder(&d, 1), holder(&d, 2));
    block(&mut d, r1, day(10));
    block(&mut d, r2, day(10));
    let mut on: BTreeMap<RelayId, Vec<MemberId>> = BTreeMap::new();
    for m in 5..=7 {
        let got = join(&mut d, m, day(20));
        assert_eq!(got.len(), 1, "member {m}");
        on.entry(got[0]).or_default().push(MemberId(m));
    }
    let (&both, shared) = on.iter().find(|(_, v)| v.len() == 2).expect("two share");
    let shared = shared.clone();
    for r in 10..13 {
        d.add_relay(RelayId(r), NetworkId(2000 + r), day(40))
            .unwrap();
    }
    // The sweep is recognised at the second block.
    let other = *on.keys().find(|r| **r != both).unwrap();
    let order = if shared_first {
        [both, other]
    } else {
        [other, both]
    };
    for r in order {
        block(&mut d, r, day(40));
    }
    shared
        .into_iter()
        .map(|m| {
            (
                m,
                d.assign(m, day(40)).map(|a| a.relays).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn newcomers_not_cleared_by_a_sweep_get_no_paid_replacement() {
    let cfg = Config {
        sweep_min_blocks: 2,
        ..no_bans()
    };
    for shared_first in [false, true] {
        // Blocked before the day was known to be a sweep's, or after.
        for (m, got) in two_newcomers_in_a_sweep(cfg.clone(), shared_first) {
            assert!(got.is_empty(), "{m:?} got {got:?} ({shared_first})");
        }
    }
    // Ordinary blame: each has 20 days of credit and its one replacement.
    let off = Config {
        sweep_min_blocks: 0,
        ..cfg
    };
    for shared_first in [false, true] {
        for (m, got) in two_newcomers_in_a_sweep(off.clone(), shared_first) {
            assert_eq!(got.len(), 1, "{m:?}");
        }
    }
}

/// One exposed member at most per relay: three relays opened to
/// newcomers on day 2, four newcomers. With `block_first`, a relay was
/// blocked in Russia on day 1. Returns what the fourth gets on day 2 and
/// on day 9, when the first three have a week of credit.
fn a_fourth_newcomer(block_first: bool) -> (Vec<RelayId>, Vec<RelayId>) {
    let cfg = Config {
        max_exposed_per_relay: 1,
        ..Config::default()
    };
    let mut d = with_relays(cfg, 1);
    if block_first {
        join(&mut d, 1, day(0));
        block(&mut d, RelayId(0), day(1));
    }
    for r in 1..4 {
        d.add_relay(RelayId(r), NetworkId(1000 + r), day(1))
            .unwrap();
    }
    let mut seats = BTreeSet::new();
    for m in 2..5 {
        let got = join(&mut d, m, day(2));
        assert_eq!(got.len(), 1, "member {m}");
        seats.insert(got[0]);
    }
    let first = join(&mut d, 5, day(2));
    for m in 2..5 {
        d.assign(MemberId(m), day(9)).unwrap();
    }
    let later = d.assign(MemberId(5), day(9)).unwrap().relays;
    if block_first {
        assert_eq!(seats.len(), 3, "one newcomer per relay: {seats:?}");
    }
    (first, later)
}

#[test]
fn once_a_censor_is_seen_a_newcomer_waits_rather_than_crowd_exposed_members() {
    let (first, later) = a_fourth_newcomer(true);
    assert!(first.is_empty(), "{first:?}");
    assert_eq!(later.len(), 1, "seated once the others earned a week");
    // No relay blocked yet: nobody waits.
    let (first, _) = a_fourth_newcomer(false);
    assert_eq!(first.len(), 1);
}

#[test]
fn newcomers_who_could_be_replaced_still_count_for_opening_relays() {
    // Member 1 has earned a replacement by day 10, but a relay with a
    // newcomer on it is still taken: member 2 gets one of its own while
    // unused buckets can be opened.
    let mut d = with_relays(Config::default(), 12);
    let first = join(&mut d, 1, day(0));
    d.assign(MemberId(1), day(10)).unwrap();
    assert_ne!(join(&mut d, 2, day(10)), first);
}

#[test]
fn by_default_a_newcomer_whose_first_relay_dies_at_once_gets_no_other() {
    let cfg = Config {
        untrusted_allowed_blockages: 100,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 12);
    let r = join(&mut d, 1, day(0))[0];
    block(&mut d, r, day(1));
    // A day of credit, and no free replacement: what a censor account that
    // burns its relay at once ends with.
    assert!(d.assign(MemberId(1), day(1)).unwrap().relays.is_empty());
    assert!(d.assign(MemberId(1), day(60)).unwrap().relays.is_empty());
    // A week with a working relay pays for one.
    let r = join(&mut d, 2, day(0))[0];
    d.assign(MemberId(2), day(4)).unwrap();
    block(&mut d, r, day(8));
    assert_eq!(d.assign(MemberId(2), day(8)).unwrap().relays.len(), 1);
}

#[test]
fn new_members_burn_no_more_than_the_open_entry_budget() {
    // 20% of 20 relays may serve new members; the rest wait in buckets for
    // members who earned them.
    let cfg = Config {
        open_pool_fraction: 0.2,
        ..Config::default()
    };
    let mut d = with_relays(cfg, 20);
    let mut t = 0;
    for m in 0..40 {
        t += 1;
        let Some(r) = join(&mut d, m, day(t)).first().copied() else {
            continue;
        };
        block(&mut d, r, day(t));
    }
    let burned = d
        .relay_health()
        .iter()
        .filter(|h| !h.blocked_in.is_empty())
        .count();
    assert!((1..=4).contains(&burned), "{burned} relays burned");
}

#[test]
fn blame_falls_on_whoever_got_the_relay_just_before_the_block() {
    let mut d = with_relays(shared(), 1);
    let r = join(&mut d, 1, day(0))[0];
    join(&mut d, 2, day(0));
    join(&mut d, 3, day(20));
    block(&mut d, r, day(20));
    let old = d.member(MemberId(1), day(20)).unwrap().suspicion;
    let new = d.member(MemberId(3), day(20)).unwrap();
    assert!(old < 0.1, "{old}");
    assert!(new.suspicion > 0.8, "{}", new.suspicion);
}

#[test]
fn a_report_counts_once_enough_members_agree() {
    let cfg = Config {
        open_pool_fraction: 1.0,
        open_members_target: 10,
        ..no_bans()
    };
    let mut d = with_relays(cfg, 1);
    let r = join(&mut d, 1, day(0))[0];
    join(&mut d, 2, day(0));
    join(&mut d, 3, day(0));
    assert!(d.report_blocked(MemberId(1), r, day(1)).unwrap().is_empty());
    assert!(!d.is_blocked(r, ru()));
    // The same member again does not count twice.
    assert!(d.report_blocked(MemberId(1), r, day(1)).unwrap().is_empty());
    let decisions = d.report_blocked(MemberId(2), r, day(1)).unwrap();
    assert!(decisions.contains(&Decision::RelayBlocked {
        relay: r,
        country: ru()
    }));
    assert!(d.is_blocked(r, ru()));
}

#[test]
fn a_lone_member_is_believed_and_blamed() {
    let mut d = with_relays(Config::default(), 12);
    let r = join(&mut d, 1, day(0))[0];
    let decisions = d.report_blocked(MemberId(1), r, day(1)).unwrap();
    assert!(d.is_blocked(r, ru()));
    // Alone with the relay, it is the only one who could have told the
    // censor: suspicion 1/1 bans it.
    assert!(decisions.contains(&Decision::Banned {
        member: MemberId(1)
    }));
    assert_eq!(
        d.assign(MemberId(1), day(1)),
        Err(DistributorError::Banned(MemberId(1)))
    );
}

#[test]
fn blame_is_shared_among_the_members_who_saw_the_relay() {
    let mut d = with_relays(shared(), 1);
    let r = join(&mut d, 1, day(0))[0];
    for m in 2..=4 {
        assert_eq!(join(&mut d, m, day(0))[0], r);
    }
    block(&mut d, r, day(1));
    for m in 1..=4 {
        let s = d.member(MemberId(m), day(1)).unwrap().suspicion;
        assert!((s - 0.25).abs() < 1e-9, "{s}");
    }
    // Suspicion fades: half after the half-life.
    let s = d.member(MemberId(1), day(91)).unwrap().suspicion;
    assert!((s - 0.125).abs() < 1e-9, "{s}");
}

#[test]
fn reports_of_a_relay_never_given_are_refused() {
    let mut d = with_relays(Config::default(), 12);
    join(&mut d, 1, day(0));
    let other = RelayId(11);
    assert_eq!(
        d.report_blocked(MemberId(1), other, day(1)),
        Err(DistributorError::NotAssigned {
            member: MemberId(1),
            relay: other
        })
    );
}

#[test]
fn the_relay_signal_detects_a_country_going_silent_and_coming_back() {
    let mut d = with_relays(Config::default(), 3);
    let r = RelayId(0);
    for t in 0..5 {
        assert!(d.relay_signal(r, ru(), 20, day(t)).unwrap().is_empty());
    }
    // A bad day is not a block; a collapse is.
    assert!(d.relay_signal(r, ru(), 12, day(5)).unwrap().is_empty());
    let decisions = d.relay_signal(r, ru(), 1, day(6)).unwrap();
    assert_eq!(
        decisions,
        vec![Decision::RelayBlocked {
            relay: r,
            country: ru()
        }]
    );
    let decisions = d.relay_signal(r, ru(), 15, day(7)).unwrap();
    assert_eq!(
        decisions,
        vec![Decision::RelayUnblocked {
            relay: r,
            country: ru()
        }]
    );
}

#[test]
fn a_report_the_relay_signal_contradicts_costs_the_reporter() {
    let mut d = with_relays(shared(), 1);
    let r = join(&mut d, 1, day(0))[0];
    join(&mut d, 2, day(0));
    d.report_blocked(MemberId(1), r, day(1)).unwrap();
    let decisions = d.relay_signal(r, ru(), 10, day(1)).unwrap();
    assert!(decisions.contains(&Decision::FalseReport {
        member: MemberId(1),
        relay: r
    }));
    assert!(d.member(MemberId(1), day(1)).unwrap().suspicion > 0.2);
    assert!(!d.is_blocked(r, ru()));
}

#[test]
fn a_retired_relay_is_replaced_without_blame() {
    let mut d = with_relays(Config::default(), 12);
    let r = join(&mut d, 1, day(0))[0];
    let decisions = d.retire_relay(r, day(1)).unwrap();
    assert_eq!(
        decisions,
        vec![Decision::Revoked {
            member: MemberId(1),
            relay: r
        }]
    );
    let now = d.assign(MemberId(1), day(1)).unwrap().relays;
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], r);
    let view = d.member(MemberId(1), day(1)).unwrap();
    assert_eq!((view.suspicion, view.blockages), (0.0, 0));
}

#[test]
fn the_state_survives_a_round_trip_through_json() {
    let mut d = with_relays(Config::default(), 12);
    join(&mut d, 1, day(0));
    d.assign(MemberId(1), day(30)).unwrap();
    d.create_invite(MemberId(1), InviteCode([3; 16]), day(30))
        .unwrap();
    let json = serde_json::to_string(&d).unwrap();
    let mut back: Distributor = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    back.redeem_invite(
        InviteCode([3; 16]),
        MemberId(2),
        ru(),
        NetworkId(2),
        day(31),
    )
    .unwrap();
    assert_eq!(back.assign(MemberId(2), day(31)).unwrap().relays.len(), 3);
}

#[test]
fn state_saved_before_the_newcomer_rules_still_loads() {
    let mut d = with_relays(Config::default(), 12);
    join(&mut d, 1, day(0));
    let mut v = serde_json::to_value(&d).unwrap();
    // What a server saved before these fields existed.
    let config = v["config"].as_object_mut().unwrap();
    for field in [
        "untrusted_restart_on_blockage",
        "untrusted_replacements",
        "probation_days",
        "seat_by_exposure",
        "no_fault_blame_ratio",
        "no_fault_replacements",
        "no_fault_max_blocks_per_day",
        "sweep_min_blocks",
        "sweep_settle_days",
        "sweep_max_blame",
        "max_exposed_per_relay",
    ] {
        assert!(config.remove(field).is_some(), "{field}");
    }
    for m in v["members"].as_object_mut().unwrap().values_mut() {
        for field in [
            "untrusted_replacements",
            "no_fault_used",
            "no_fault_due",
            "free_due",
            "cleared_at",
        ] {
            m.as_object_mut().unwrap().remove(field).unwrap();
        }
    }
    v.as_object_mut().unwrap().remove("blocks_today").unwrap();
    v.as_object_mut().unwrap().remove("sweeps").unwrap();
    v.as_object_mut().unwrap().remove("lost_today").unwrap();
    let mut back: Distributor = serde_json::from_value(v).unwrap();
    assert_eq!(back.config(), &Config::default());
    assert_eq!(back.assign(MemberId(1), day(30)).unwrap().level, 1);
}

#[derive(Clone, Debug)]
enum Op {
    AddRelay(u8),
    Register(u8),
    Assign(u8),
    Report(u8, u8),
    Signal(u8, u8),
    Invite(u8, u8),
    Retire(u8),
    Wait(u8),
    /// Blocks the n-th known relay in Russia through its signal.
    Block(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u8>().prop_map(Op::AddRelay),
        any::<u8>().prop_map(Op::Register),
        any::<u8>().prop_map(Op::Assign),
        (any::<u8>(), any::<u8>()).prop_map(|(m, r)| Op::Report(m, r)),
        (any::<u8>(), 0u8..30).prop_map(|(r, c)| Op::Signal(r, c)),
        (any::<u8>(), any::<u8>()).prop_map(|(m, n)| Op::Invite(m, n)),
        any::<u8>().prop_map(Op::Retire),
        (0u8..40).prop_map(Op::Wait),
        any::<u8>().prop_map(Op::Block),
    ]
}

/// Runs the operations; errors are part of the game and ignored. `sweep` sets `sweep_min_blocks` and
/// `max_exposed_per_relay` low (1 to 3) so that sweeps and waiting for room
/// happen among few relays, or turns both off (0).
fn run(ops: &[Op], cap: usize, sweep: u32) -> Distributor {
    run_until(ops, cap, sweep).0
}

/// [`run`], and the time of the last operation.
fn run_until(ops: &[Op], cap: usize, sweep: u32) -> (Distributor, Time) {
    let countries = [ru(), Country::new("IR").unwrap()];
    let cfg = Config {
        max_members_per_relay: cap,
        sweep_min_blocks: sweep,
        max_exposed_per_relay: sweep as usize,
        ..Config::default()
    };
    let mut d = Distributor::new(cfg, 9).unwrap();
    let mut t = 0u64;
    let mut next_code = 0u8;
    for op in ops {
        let now = day(t);
        match *op {
            Op::AddRelay(r) => {
                let _ = d.add_relay(RelayId(r.into()), NetworkId((r % 4).into()), now);
            }
            Op::Register(m) => {
                let c = countries[usize::from(m % 2)];
                let _ = d.register_member(MemberId(m.into()), c, NetworkId((m % 3).into()), now);
            }
            Op::Assign(m) => {
                let _ = d.assign(MemberId(m.into()), now);
            }
            Op::Report(m, r) => {
                let _ = d.report_blocked(MemberId(m.into()), RelayId(r.into()), now);
            }
            Op::Signal(r, c) => {
                let _ = d.relay_signal(RelayId(r.into()), ru(), c.into(), now);
            }
            Op::Invite(m, n) => {
                next_code = next_code.wrapping_add(1);
                let code = InviteCode([next_code; 16]);
                if d.create_invite(MemberId(m.into()), code, now).is_ok() {
                    let c = countries[usize::from(n % 2)];
                    let _ =
                        d.redeem_invite(code, MemberId(1000 + u64::from(n)), c, NetworkId(9), now);
                }
            }
            Op::Retire(r) => {
                let _ = d.retire_relay(RelayId(r.into()), now);
            }
            Op::Wait(days) => t += u64::from(days),
            Op::Block(n) => {
                let known: Vec<RelayId> = d.relays.keys().copied().collect();
                if !known.is_empty() {
                    block(&mut d, known[usize::from(n) % known.len()], now);
                }
            }
        }
    }
    (d, day(t))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn invariants_hold_whatever_happens(
        ops in proptest::collection::vec(op(), 1..300),
        cap in 1usize..6,
        sweep in 0u32..4,
    ) {
        let d = run(&ops, cap, sweep);
        let now = Time(u64::MAX / 2);
        for (id, m) in &d.members {
            let view = d.member(*id, now).unwrap();
            prop_assert!(view.level <= MAX_LEVEL);
            for r in &view.relays {
                // Never a relay known to be blocked in the member's country,
                // never a retired one.
                prop_assert!(!d.is_blocked(*r, m.country));
                prop_assert!(!d.relays[r].retired);
                prop_assert!(d.relays[r].members.contains_key(id));
            }
            prop_assert!(view.relays.len() <= d.config.bucket_size + d.config.max_kept_relays + d.config.untrusted_relays);
            if m.banned || m.suspended_until.is_some() {
                prop_assert!(view.relays.is_empty());
            }
            if let Some(t) = m.cleared_at {
                // Cleared by a sweep that happened.
                prop_assert!(d.sweeps.get(&m.country).is_some_and(|s| s.day >= t.day()));
            }
            if m.level == 0 {
                prop_assert!(m.bucket.is_none());
                prop_assert!(view.relays.len() <= d.config.untrusted_relays + d.config.max_kept_relays);
            }
        }
        for r in d.relays.values() {
            prop_assert!(r.members.len() <= cap);
        }
        for b in d.buckets.values() {
            prop_assert!(b.members.len() <= cap);
            prop_assert_eq!(b.relays.len(), d.config.bucket_size);
        }
    }

    #[test]
    fn the_reason_a_member_is_given_for_holding_nothing_is_true(
        ops in proptest::collection::vec(op(), 1..300),
        cap in 1usize..6,
        sweep in 0u32..4,
    ) {
        let (d, now) = run_until(&ops, cap, sweep);
        for id in d.members.keys() {
            let view = d.member(*id, now).unwrap();
            // A reason exactly when it holds nothing.
            prop_assert_eq!(view.unserved.is_none(), !view.relays.is_empty(), "{:?}", view);
            // A reason that says no relay is coming is right: asking now
            // gets nothing.
            if let Some(
                why @ (Unserved::NoCredit
                | Unserved::NoAllowance
                | Unserved::RateLimited
                | Unserved::Banned
                | Unserved::Suspended),
            ) = view.unserved
            {
                let mut again = d.clone();
                let got = again.assign(*id, now).map(|a| a.relays).unwrap_or_default();
                prop_assert!(got.is_empty(), "{:?} yet given {:?}", why, got);
            }
        }
    }

    #[test]
    fn the_same_calls_give_the_same_state(ops in proptest::collection::vec(op(), 1..200), sweep in 0u32..4) {
        let a = serde_json::to_string(&run(&ops, 4, sweep)).unwrap();
        let b = serde_json::to_string(&run(&ops, 4, sweep)).unwrap();
        prop_assert_eq!(a, b);
    }
}
