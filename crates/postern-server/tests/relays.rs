//! Relays from the config, handed out by the distributor over loopback:
//! what members get, invitations, reports, restarts, and what an attacker
//! cannot do.

mod common;

use common::{TestServer, error_code};
use postern_client::{ClientError, Connection, RelayAssignment};
use postern_proto::pb::{self, ErrorCode, request::Kind as Req};
use postern_server::config::RelayConfig;
use postern_server::{Server, ServerConfig};

fn relays(n: usize) -> Vec<RelayConfig> {
    (0..n)
        .map(|i| RelayConfig {
            name: format!("relay-{i}"),
            link: format!("postern://relay?host=r{i}.example&secret=s{i}"),
            network: Some(format!("net-{}", i % 2)),
            country: Some("NL".into()),
        })
        .collect()
}

fn with_relays(cfg: &mut ServerConfig) {
    cfg.relays = relays(7);
}

/// A policy under which a member is trusted (and may invite) on its second
/// relay request instead of after 30 days.
fn trusted_at_once(cfg: &mut ServerConfig) {
    with_relays(cfg);
    cfg.distributor.untrusted_days = 0;
}

fn code_of(e: ClientError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected a refusal, got {e}"))
}

async fn relays_json(t: &TestServer) -> serde_json::Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("http://{}/relays", t.server.http_addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn register_invited(
    t: &TestServer,
    name: &str,
    phone: &str,
    invite: &str,
) -> Result<Connection, ClientError> {
    let client = t.client(name);
    let mut conn = client.connect().await.unwrap();
    conn.request_code(phone).await.unwrap();
    conn.register_with_invite(phone, &t.code(phone), Some(name), "test", Some(invite))
        .await
        .map(|_| conn)
}

/// Stops the server and starts it again on the same data and addresses.
async fn restart(t: TestServer, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let TestServer {
        server,
        dir,
        outbox,
    } = t;
    let (listen, http_listen) = (server.client_addr, server.http_addr);
    server.shutdown().await;
    let mut cfg = common::config(dir.path());
    (cfg.listen, cfg.http_listen) = (listen, http_listen);
    tweak(&mut cfg);
    let server = Server::start(cfg).await.expect("restarts");
    TestServer {
        server,
        dir,
        outbox,
    }
}

#[tokio::test]
async fn a_new_member_gets_one_configured_relay_and_operators_see_no_one() {
    let t = TestServer::start_with(with_relays).await;
    let (_a, alice) = t.member("alice", "+14155552671").await;
    let got = alice.fetch_relays().await.unwrap();
    assert_eq!((got.links.len(), got.level, got.invitations), (1, 0, 0));
    let configured: Vec<String> = relays(7).into_iter().map(|r| r.link).collect();
    assert!(configured.contains(&got.links[0]));
    // Asking again gives the same relay, not another one.
    assert_eq!(alice.fetch_relays().await.unwrap(), got);

    let status = relays_json(&t).await;
    let listed = status["relays"].as_array().unwrap();
    assert_eq!(listed.len(), 7);
    let holders: u64 = listed.iter().map(|r| r["members"].as_u64().unwrap()).sum();
    assert_eq!(holders, 1);
    assert!(listed.iter().all(|r| r["country"] == "NL"));
    let text = status.to_string();
    let me = alice.whoami().await.unwrap();
    assert!(!text.contains("4155552671"));
    assert!(!text.contains(&me.account.to_string()));
    assert!(!text.contains("secret"), "links are not shown: {text}");
}

#[tokio::test]
async fn invitations_are_single_use_and_bad_ones_refuse_registration() {
    let t = TestServer::start_with(trusted_at_once).await;
    let (_a, alice) = t.member("alice", "+14155552671").await;
    alice.fetch_relays().await.unwrap();
    let trusted = alice.fetch_relays().await.unwrap();
    assert_eq!(trusted.level, 1);
    assert_eq!(trusted.links.len(), 3, "a trusted member holds a bucket");
    assert_eq!(trusted.invitations, 2);

    let code = alice.create_invite().await.unwrap();
    assert_eq!(code.len(), 32);
    let bob = register_invited(&t, "bob", "+14155552672", &code)
        .await
        .unwrap();
    let bobs = bob.fetch_relays().await.unwrap();
    assert_eq!(bobs.level, 1, "an invited member starts trusted");
    assert_eq!(bobs.links, trusted.links, "in its inviter's bucket");

    // Used once, the code is dead; the refusal leaves the SMS code usable.
    let client = t.client("carol");
    let mut carol = client.connect().await.unwrap();
    carol.request_code("+14155552673").await.unwrap();
    let sms = t.code("+14155552673");
    let refused = carol
        .register_with_invite("+14155552673", &sms, None, "test", Some(&code))
        .await
        .unwrap_err();
    assert_eq!(code_of(refused), ErrorCode::InviteInvalid);
    for junk in ["not-a-code", &"0".repeat(32)] {
        let refused = carol
            .register_with_invite("+14155552673", &sms, None, "test", Some(junk))
            .await
            .unwrap_err();
        assert_eq!(code_of(refused), ErrorCode::InviteInvalid);
    }
    carol
        .register("+14155552673", &sms, None, "test")
        .await
        .unwrap();
    let carols = carol.fetch_relays().await.unwrap();
    assert_eq!((carols.level, carols.links.len()), (0, 1));

    // A new member has no invitations; alice's run out.
    assert_eq!(
        code_of(carol.create_invite().await.unwrap_err()),
        ErrorCode::NoInvitations
    );
    alice.create_invite().await.unwrap();
    assert_eq!(
        code_of(alice.create_invite().await.unwrap_err()),
        ErrorCode::NoInvitations
    );
}

#[tokio::test]
async fn a_member_cannot_redeem_an_invitation_for_itself() {
    let t = TestServer::start_with(trusted_at_once).await;
    let (a, mut alice) = t.member("alice", "+14155552671").await;
    alice.fetch_relays().await.unwrap();
    alice.fetch_relays().await.unwrap();
    let code = alice.create_invite().await.unwrap();
    // Registering again, with or without a new phone, is refused: the
    // device is registered already.
    alice.request_code("+14155552679").await.unwrap();
    let again = alice
        .register_with_invite(
            "+14155552679",
            &t.code("+14155552679"),
            None,
            "test",
            Some(&code),
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(again), ErrorCode::AlreadyAuthenticated);
    let mut raw = t.raw_as(&a).await;
    let resp = raw
        .call(Req::Register(pb::Register {
            phone: "+14155552671".into(),
            code: "000000".into(),
            device: None,
            username: String::new(),
            invite: code.clone(),
        }))
        .await;
    assert_eq!(error_code(&resp), ErrorCode::AlreadyAuthenticated);
    // The code is still good for someone else, once.
    register_invited(&t, "bob", "+14155552672", &code)
        .await
        .unwrap();
    let Err(twice) = register_invited(&t, "eve", "+14155552673", &code).await else {
        panic!("an invitation redeemed twice");
    };
    assert_eq!(code_of(twice), ErrorCode::InviteInvalid);
}

#[tokio::test]
async fn confirmed_reports_replace_the_blocked_relay() {
    // Two newcomers share an open-entry relay and a confirmed block is
    // replaced at once (the defaults give each newcomer its own relay and
    // no free replacement; see the distributor's docs).
    let t = TestServer::start_with(|cfg| {
        with_relays(cfg);
        cfg.distributor.open_members_target = 2;
        cfg.distributor.free_replacements = 1;
    })
    .await;
    let (_a, alice) = t.member("alice", "+14155552671").await;
    let (_b, bob) = t.member("bob", "+14155552672").await;
    let first = alice.fetch_relays().await.unwrap();
    let blocked = first.links[0].clone();
    assert_eq!(
        bob.fetch_relays().await.unwrap().links,
        vec![blocked.clone()]
    );

    // One report of two members is not a block yet.
    let after_one = alice.report_blocked(&blocked).await.unwrap();
    assert_eq!(after_one.links, vec![blocked.clone()]);
    assert!(
        relays_json(&t).await["blocked_per_country"]
            .as_object()
            .unwrap()
            .is_empty()
    );

    // The second confirms it: the reporter gets a replacement at once, the
    // other member on its next request.
    let after_two = bob.report_blocked(&blocked).await.unwrap();
    assert_replaced(&after_two, &blocked);
    assert_replaced(&alice.fetch_relays().await.unwrap(), &blocked);

    let status = relays_json(&t).await;
    assert_eq!(status["blocked_per_country"]["US"], 1);
    let relay = status["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["blocked_in"].get("US").is_some())
        .expect("the blocked relay is shown blocked in US");
    assert_eq!(relay["members"], 0);
}

fn assert_replaced(held: &RelayAssignment, blocked: &str) {
    assert_eq!(held.links.len(), 1, "{held:?}");
    assert_ne!(held.links[0], blocked);
}

#[tokio::test]
async fn relays_and_invitations_survive_a_restart() {
    let t = TestServer::start_with(trusted_at_once).await;
    let (a, alice) = t.member("alice", "+14155552671").await;
    let (_c, carol) = t.member("carol", "+14155552673").await;
    alice.fetch_relays().await.unwrap();
    let held = alice.fetch_relays().await.unwrap();
    let carols = carol.fetch_relays().await.unwrap();
    let code = alice.create_invite().await.unwrap();
    drop((alice, carol));

    let t = restart(t, trusted_at_once).await;

    let alice = a.connect().await.unwrap();
    let after = alice.fetch_relays().await.unwrap();
    assert_eq!((after.links, after.level), (held.links, 1));
    assert_eq!(after.invitations, 1);
    let bob = register_invited(&t, "bob", "+14155552672", &code)
        .await
        .unwrap();
    assert_eq!(bob.fetch_relays().await.unwrap().level, 1);
    let holders: u64 = relays_json(&t).await["relays"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["members"].as_u64().unwrap())
        .sum();
    assert_eq!(
        holders,
        3 + 3 + 1,
        "alice's bucket, bob in it, carol's relay"
    );
    assert!(!carols.links.is_empty());
}

#[tokio::test]
async fn a_relay_dropped_from_the_config_is_replaced_after_restart() {
    let t = TestServer::start_with(with_relays).await;
    let (a, alice) = t.member("alice", "+14155552671").await;
    let held = alice.fetch_relays().await.unwrap().links[0].clone();
    drop(alice);
    let t = restart(t, |cfg| {
        cfg.relays = relays(7).into_iter().filter(|r| r.link != held).collect();
    })
    .await;
    let alice = a.connect().await.unwrap();
    assert_replaced(&alice.fetch_relays().await.unwrap(), &held);
    let retired = relays_json(&t).await["relays"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["pool"] == "retired")
        .count();
    assert_eq!(retired, 1);
}

#[tokio::test]
async fn strangers_get_nothing_and_members_are_rate_limited() {
    let t = TestServer::start_with(|cfg| {
        with_relays(cfg);
        cfg.limits.relay_requests_per_account_per_hour = 3;
    })
    .await;
    let mut raw = t.raw().await;
    for req in [
        Req::FetchRelays(pb::FetchRelays {}),
        Req::CreateInvite(pb::CreateInvite {}),
        Req::ReportBlocked(pb::ReportBlocked {
            link: relays(1)[0].link.clone(),
        }),
    ] {
        assert_eq!(
            error_code(&raw.call(req).await),
            ErrorCode::NotAuthenticated
        );
    }

    let (_a, alice) = t.member("alice", "+14155552671").await;
    let mine = alice.fetch_relays().await.unwrap().links[0].clone();
    let other = relays(7)
        .into_iter()
        .map(|r| r.link)
        .find(|l| *l != mine)
        .unwrap();
    // A member cannot report (and so burn) a relay it was never given.
    for link in [other.as_str(), "postern://relay?made-up"] {
        assert_eq!(
            code_of(alice.report_blocked(link).await.unwrap_err()),
            ErrorCode::UnknownRelay
        );
    }
    let limited = alice.fetch_relays().await.unwrap_err();
    assert!(
        matches!(
            limited,
            ClientError::Server {
                code: ErrorCode::RateLimited,
                retry_after: Some(_),
                ..
            }
        ),
        "{limited}"
    );
}

#[tokio::test]
async fn new_members_from_one_network_are_limited_per_day() {
    let t = TestServer::start_with(|cfg| {
        with_relays(cfg);
        cfg.distributor.network_registrations_per_day = 1;
    })
    .await;
    let (_a, alice) = t.member("alice", "+14155552671").await;
    assert_eq!(alice.fetch_relays().await.unwrap().links.len(), 1);
    // Bob registers (the account works for messaging) but gets no relay
    // from this network today.
    let (_b, bob) = t.member("bob", "+14155552672").await;
    assert_eq!(
        code_of(bob.fetch_relays().await.unwrap_err()),
        ErrorCode::RateLimited
    );
}

#[tokio::test]
async fn one_invitation_admits_one_of_two_racing_registrations() {
    let t = TestServer::start_with(trusted_at_once).await;
    let (_a, alice) = t.member("alice", "+14155552671").await;
    alice.fetch_relays().await.unwrap();
    alice.fetch_relays().await.unwrap();
    let code = alice.create_invite().await.unwrap();
    let mut racers = Vec::new();
    for (name, phone) in [("bob", "+14155552672"), ("eve", "+14155552673")] {
        let client = t.client(name);
        let conn = client.connect().await.unwrap();
        conn.request_code(phone).await.unwrap();
        racers.push((conn, phone, t.code(phone)));
    }
    let results = futures::future::join_all(racers.iter_mut().map(|(conn, phone, sms)| {
        conn.register_with_invite(phone, sms, None, "test", Some(&code))
    }))
    .await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 1, "{results:?}");
    let refused = results.into_iter().find_map(Result::err).unwrap();
    assert_eq!(code_of(refused), ErrorCode::InviteInvalid);
}

#[tokio::test]
async fn an_account_alone_on_a_relay_it_gets_blocked_gets_no_more() {
    let t = TestServer::start_with(with_relays).await;
    let (_a, alice) = t.member("alice", "+14155552671").await;
    // A member in another country shares nothing of the blame.
    let (_b, boris) = t.member("boris", "+79123456789").await;
    let mine = alice.fetch_relays().await.unwrap().links[0].clone();
    boris.fetch_relays().await.unwrap();
    // Alice is the only member in her country with this relay: her report
    // alone confirms the block, all the blame is hers, and she is taken
    // for a censor's account (the distributor's rule; THREAT_MODEL.md says
    // what it costs honest members).
    let refused = alice.report_blocked(&mine).await.unwrap_err();
    assert_eq!(code_of(refused), ErrorCode::RelaysRefused);
    let refused = alice.fetch_relays().await.unwrap_err();
    assert_eq!(code_of(refused), ErrorCode::RelaysRefused);
    assert_eq!(relays_json(&t).await["blocked_per_country"]["US"], 1);
    assert_eq!(boris.fetch_relays().await.unwrap().links.len(), 1);
}

#[tokio::test]
async fn a_member_given_no_relay_is_told_why() {
    let t = TestServer::start_with(|cfg| {
        cfg.relays = relays(1);
        cfg.distributor.max_members_per_relay = 1;
    })
    .await;
    let (_a, alice) = t.member("alice", "+14155552671").await;
    let got = alice.fetch_relays().await.unwrap();
    assert_eq!((got.links.len(), got.unserved), (1, None));
    // The one relay is full: bob waits, and is told so.
    let (_b, bob) = t.member("bob", "+14155552672").await;
    let got = bob.fetch_relays().await.unwrap();
    assert!(got.links.is_empty());
    let (why, text) = got.unserved.expect("a reason");
    assert_eq!(why, "waiting");
    assert!(text.contains("room"), "{text}");
}
