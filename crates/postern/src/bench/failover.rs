//! `postern bench failover`: how long a conversation stalls when the route
//! in use is blocked, and `postern bench storm`: a reconnect storm.
//!
//! Failover runs the server in-process with every carrier, behind the
//! censor harness: alice reaches it over five routes — the one in use
//! (TCP), three that the censor has dead (TLS and WebSocket blackholed,
//! QUIC's UDP dropped) and, last in her order, a second TCP route that
//! works. Bob listens over a route of his own. Each run: alice is on the
//! first route, the censor blocks it, alice sends; the figure is the time
//! from the block to bob holding the message. Alice's route memory is
//! cleared between runs, so the three dead routes are always ahead of the
//! working one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postern_censor::{Censor, Rule};
use postern_client::connectivity::{Candidate, Source};
use postern_client::{Client, Connectivity, Event, Racing, Recipient, Target};
use postern_proto::link::ServerLink;
use postern_server::{Server, ServerConfig};
use postern_transport::carrier::Carrier;
use postern_transport::tls::Verify;

/// Options of `postern bench failover`.
#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Measured runs.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// How the route in use is blocked: reset (RST injected) or blackhole
    /// (the connection goes silent, noticed by the request timeout).
    #[arg(long, default_value = "reset")]
    block: String,
    /// The client's request timeout in ms (how long a silent route is
    /// trusted).
    #[arg(long, default_value_t = 1000)]
    request_timeout_ms: u64,
}

pub async fn failover(a: FailoverArgs) -> anyhow::Result<()> {
    let rule = match a.block.as_str() {
        "reset" => Rule::Reset,
        "blackhole" => Rule::Blackhole,
        other => bail!("--block is reset or blackhole, not {other:?}"),
    };
    let dir = tempfile::tempdir()?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut cfg = ServerConfig {
        data_dir: dir.path().join("server"),
        listen: any,
        http_listen: any,
        ..ServerConfig::default()
    };
    cfg.sms.outbox = Some(dir.path().join("outbox.jsonl"));
    cfg.limits.code_interval = Duration::ZERO;
    cfg.carriers.tls = Some(any);
    cfg.carriers.wss = Some(any);
    cfg.carriers.quic = Some(any);
    let server = Server::start(cfg).await?;
    let carriers = server.carriers;
    let (tls, wss, quic) = (
        carriers.tls.context("tls")?,
        carriers.wss.context("wss")?,
        carriers.quic.context("quic")?,
    );
    let censor = Censor::new();
    let in_use = censor.tcp(server.client_addr).await?;
    let link = ServerLink {
        tcp: vec![in_use.to_string()],
        tls: vec![censor.tcp(tls).await?.to_string()],
        wss: vec![format!("{}/postern", censor.tcp(wss).await?)],
        quic: vec![censor.udp(quic).await?.to_string()],
        sni: None,
        cert_sha256: server.link.cert_sha256,
        noise_key: server.link.noise_key,
        ..ServerLink::default()
    };
    // The working route: a second proxy (its own censor, never blocked).
    let spare_censor = Censor::new();
    let spare = spare_censor.tcp(server.client_addr).await?;
    for dead in [tls, wss] {
        censor.set(dead, Rule::Blackhole);
    }
    censor.set(quic, Rule::DropUdp);

    let outbox = dir.path().join("outbox.jsonl");
    let member = |name: &str, phone: &str, link: ServerLink| {
        let home = dir.path().join(name);
        let outbox = outbox.clone();
        let (name, phone) = (name.to_owned(), phone.to_owned());
        async move {
            let client = Client::setup(&home, &link)?;
            let mut conn = client.connect().await?;
            conn.request_code(&phone).await?;
            let code = postern_server::sms::outbox_code(&outbox, &phone)?
                .context("no code in the outbox")?;
            conn.register(&phone, &code, Some(&name), "bench").await?;
            anyhow::Ok(client)
        }
    };
    let bob = member("bob", "+14155550101", server.link.clone()).await?;
    let alice = member("alice", "+14155550102", link).await?;
    alice.set_connectivity(Connectivity {
        racing: Racing {
            attempt_timeout: Duration::from_secs(3),
            ..Racing::default()
        },
        request_timeout: Duration::from_millis(a.request_timeout_ms),
        ping_every: Duration::from_secs(25),
    });
    alice.set_extra_candidates(vec![Candidate {
        carrier: Carrier::Tcp,
        host: spare.ip().to_string(),
        port: spare.port(),
        path: None,
        sni: None,
        verify: Verify::System,
        priority: 100,
        source: Source::Directory,
        relay: None,
    }]);

    let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let mut listener = bob.listen();
    let listening = tokio::spawn(async move {
        while let Ok(e) = listener.next().await {
            if let Event::Message(m) = e
                && !m.is_system()
            {
                let _ = tx.send((m.text().to_owned(), Instant::now()));
            }
        }
    });
    let to = Target::Contact(Recipient::Username("bob".into()));
    let mut times = Vec::with_capacity(a.runs);
    for run in 0..=a.runs {
        censor.set(server.client_addr, Rule::Pass);
        alice.with_home(|h| h.forget_routes())?;
        let mut conn = alice.connect().await?;
        if !conn.route().starts_with(&format!("tcp://{in_use}")) {
            bail!("alice started on {}, not the first route", conn.route());
        }
        // Warm up: the conversation exists, bob is listening.
        let warm = format!("warm-up {run}");
        conn.send_text(&to, &warm).await?;
        wait_for(&mut got, &warm).await?;
        censor.set(server.client_addr, rule);
        let blocked = Instant::now();
        let text = format!("after the block {run}");
        let mut queued = false;
        let mut route = String::new();
        for _ in 0..10 {
            let before = alice.with_home(|h| h.outbox())?.len();
            let sent = async {
                if !queued {
                    let r = conn.queue_text(&to, &text).await;
                    queued = alice.with_home(|h| h.outbox())?.len() > before;
                    r?;
                }
                conn.flush_outbox().await
            }
            .await;
            match sent {
                Ok(_) => break,
                Err(e) if e.is_transient() => {
                    conn.record_failure(&e)?;
                    conn = alice.connect().await?;
                    route = conn.route().to_owned();
                }
                Err(e) => return Err(e.into()),
            }
        }
        let arrived = wait_for(&mut got, &text).await?;
        let took = arrived - blocked;
        if run == 0 {
            eprintln!("(run 0 is a warm-up) {took:?} over {route}");
            continue;
        }
        eprintln!("run {run}: {:.0} ms, now over {route}", ms(took));
        times.push(took);
    }
    listening.abort();
    times.sort();
    let median = times[times.len() / 2];
    let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
    println!(
        "failover ({}, 3 dead candidates ahead of the working one): median {:.0} ms, p90 {:.0} ms, max {:.0} ms over {} runs",
        a.block,
        ms(median),
        ms(p90),
        ms(*times.last().context("no runs")?),
        times.len()
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "failover",
            "block": a.block,
            "runs": times.len(),
            "request_timeout_ms": a.request_timeout_ms,
            "median_ms": ms(median),
            "p90_ms": ms(p90),
            "max_ms": ms(*times.last().context("no runs")?),
        })
    );
    server.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn wait_for(
    got: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    want: &str,
) -> anyhow::Result<Instant> {
    loop {
        let (text, at) = tokio::time::timeout(Duration::from_secs(60), got.recv())
            .await
            .context("bob did not get the message within 60 s")?
            .context("bob's listener stopped")?;
        if text == want {
            return Ok(at);
        }
    }
}
