//! `postern relay`: run a relay (volunteers), check one (`relay doctor`),
//! and the member's relay list (`relay add|list|test|remove`, plus the
//! distributor's `relay fetch|report`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use postern_client::Client;
use postern_client::connectivity::Candidate;
use postern_proto::link::RelayLink;
use postern_relay::RelayConfig;

/// Running a relay in front of a cover website.
#[derive(Args, Clone, Debug, Default)]
pub struct RelayRunArgs {
    /// A TOML config file (keys as the flags, with `_`: listen, public,
    /// cover, sni, server, data_dir, name, metrics, metrics_public,
    /// max_connections, window_secs, handshake_timeout_secs,
    /// cover_refresh_secs, replay_max_entries, register, capacity,
    /// regions, report_interval_secs). Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to listen (default 0.0.0.0:443).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// HOST:PORT members connect to, put in the relay link (default: the
    /// listen address; required when listening on 0.0.0.0 or [::]).
    #[arg(long, value_name = "HOST:PORT")]
    pub public: Option<String>,
    /// The real HTTPS website this relay sits in front of (one you
    /// control, e.g. 127.0.0.1:8443). Strangers and probers are passed to
    /// it untouched.
    #[arg(long, value_name = "HOST:PORT")]
    pub cover: Option<String>,
    /// The cover site's name (its certificate's name): members send it as
    /// SNI, and hellos for any other name go to the cover.
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// The server's link (postern://server?…), or a file holding it.
    #[arg(long, value_name = "LINK")]
    pub server: Option<String>,
    /// Where the relay keeps its secret and replay cache (default
    /// ./postern-relay).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A label for the relay link (letters, digits, - . _).
    #[arg(long)]
    pub name: Option<String>,
    /// Serve Prometheus metrics on this local address (e.g. 127.0.0.1:9477).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Most connections at once (default 16384).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Countries the relay means to serve, comma-separated two-letter
    /// codes (told to the server's distributor).
    #[arg(long, value_delimiter = ',', value_name = "CC,CC")]
    pub regions: Vec<String>,
    /// Connections offered to the server (default: --max-connections).
    #[arg(long)]
    pub capacity: Option<usize>,
    /// Do not register with the server nor report health.
    #[arg(long)]
    pub no_register: bool,
    /// Also print the relay link as a QR code.
    #[arg(long)]
    pub qr: bool,
}

impl RelayRunArgs {
    /// The config: the file's, then the flags over it.
    pub fn config(&self) -> anyhow::Result<RelayConfig> {
        let mut c = match &self.config {
            Some(path) => RelayConfig::from_file(path)?,
            None => RelayConfig::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.public {
            c.public = Some(v.clone());
        }
        if let Some(v) = &self.cover {
            c.cover = v.clone();
        }
        if let Some(v) = &self.sni {
            c.sni = v.clone();
        }
        if let Some(v) = &self.server {
            c.server = read_link(v)?;
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.name {
            c.name = Some(v.clone());
        }
        if let Some(v) = self.metrics {
            c.metrics = Some(v);
        }
        if let Some(v) = self.max_connections {
            c.max_connections = v;
        }
        if !self.regions.is_empty() {
            c.regions = self
                .regions
                .iter()
                .map(|r| r.trim().to_ascii_uppercase())
                .collect();
        }
        if let Some(v) = self.capacity {
            c.capacity = Some(v);
        }
        if self.no_register {
            c.register = false;
        }
        Ok(c)
    }
}

/// A link given as text, or a file holding it.
fn read_link(value: &str) -> anyhow::Result<String> {
    if value.starts_with("postern://") {
        return Ok(value.to_owned());
    }
    let text = std::fs::read_to_string(value)
        .with_context(|| format!("\"{value}\" is neither a postern:// link nor a readable file"))?;
    Ok(text.trim().to_owned())
}

/// Raises the open-file limit towards what `max_connections` needs (two
/// descriptors per connection: the member's and the server's or cover's).
fn raise_fd_limit(max_connections: usize) {
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(256);
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < want
    {
        let _ = rlimit::Resource::NOFILE.set(want.min(hard), hard);
    }
}

/// `postern relay --listen … --cover … --sni … --server …`
pub async fn run(args: RelayRunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    raise_fd_limit(config.max_connections);
    let relay = postern_relay::start(config, postern_relay::Hooks::default()).await?;
    println!("Relay listening on {}", relay.local_addr());
    println!(
        "Operator key (give it to the server's operators to have this relay trusted): {}",
        relay.operator_key()
    );
    if let Some(m) = relay.metrics_addr() {
        println!("Metrics: http://{m}/metrics");
    }
    println!("Give members this relay link (it holds the relay secret: share it only with them):");
    println!("{}", relay.link());
    if args.qr {
        crate::chat_cmd::print_qr(&relay.link().to_string())?;
    }
    println!("Check the setup with `postern relay doctor` and the same flags. Stop with Ctrl-C.");
    crate::serve::shutdown_signal().await;
    relay.stop().await;
    println!("Stopped.");
    Ok(())
}

/// `postern relay doctor`: checks the setup and says what to fix.
pub async fn doctor(args: RelayRunArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let mut problems = 0;
    let mut report = |ok: bool, what: &str, fix: String| {
        if ok {
            println!("ok    {what}");
        } else {
            problems += 1;
            println!("FAIL  {what}\n      → {fix}");
        }
    };
    let server = match config.check() {
        Ok(link) => {
            report(true, "the configuration is complete", String::new());
            Some(link)
        }
        Err(e) => {
            report(false, "the configuration is complete", format!("{e:#}"));
            None
        }
    };
    // The cover answers TLS for the SNI.
    if !config.cover.is_empty() && !config.sni.is_empty() {
        match postern_relay::cover::learn(&config.cover, &config.sni, Duration::from_secs(10)).await
        {
            Ok(shape) => report(
                true,
                &format!(
                    "the cover {} answers TLS 1.3 for {} ({shape:?})",
                    config.cover, config.sni
                ),
                String::new(),
            ),
            Err(e) => report(
                false,
                &format!(
                    "the cover {} answers TLS 1.3 for {}",
                    config.cover, config.sni
                ),
                format!(
                    "{e:#}. Run a real HTTPS site there with a certificate for {} \
                     (nginx, caddy…), reachable from this machine.",
                    config.sni
                ),
            ),
        }
    }
    // SNI and DNS agree: the name resolves to the public address.
    let public = config
        .public
        .clone()
        .unwrap_or_else(|| config.listen.to_string());
    if !config.sni.is_empty() {
        let public_host = public
            .rsplit_once(':')
            .map_or(public.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let resolved: Vec<std::net::IpAddr> = tokio::net::lookup_host((config.sni.as_str(), 443))
            .await
            .map(|it| it.map(|a| a.ip()).collect())
            .unwrap_or_default();
        let public_ips: Vec<std::net::IpAddr> =
            tokio::net::lookup_host((public_host.as_str(), 443))
                .await
                .map(|it| it.map(|a| a.ip()).collect())
                .unwrap_or_default();
        let agree = !resolved.is_empty() && resolved.iter().any(|ip| public_ips.contains(ip));
        report(
            agree,
            &format!(
                "{} resolves to this relay's public address {public}",
                config.sni
            ),
            if resolved.is_empty() {
                format!(
                    "{} does not resolve. A censor compares the SNI with the address: \
                     point the name's A/AAAA record at {public_host}.",
                    config.sni
                )
            } else {
                format!(
                    "{} resolves to {resolved:?}, not to {public_host}. Point its DNS record \
                     at this machine, or use the name this machine really serves.",
                    config.sni
                )
            },
        );
    }
    // The listening port is reachable (from here; a check from outside
    // the country is the real test).
    let reachable = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(public.as_str()),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    report(
        reachable,
        &format!("something listens on {public} (checked from this machine)"),
        format!(
            "nothing answers on {public}: start the relay (`postern relay` with the same flags), \
             open the port in the firewall, or fix --public"
        ),
    );
    // The server accepts connections from here.
    if let Some(server) = server {
        let mut ok = false;
        let mut why = String::new();
        for endpoint in &server.tcp {
            match tokio::time::timeout(
                Duration::from_secs(10),
                server_handshake(endpoint, &server.noise_key),
            )
            .await
            {
                Ok(Ok(())) => {
                    ok = true;
                    break;
                }
                Ok(Err(e)) => why = format!("{endpoint}: {e:#}"),
                Err(_) => why = format!("{endpoint}: timed out"),
            }
        }
        report(
            ok,
            "the server answers with the key in its link",
            format!(
                "{why}. Check --server (copy the current link from the operator) and that \
                 this machine may reach the server."
            ),
        );
    }
    if problems == 0 {
        println!("All checks passed.");
        Ok(())
    } else {
        anyhow::bail!("{problems} check(s) failed")
    }
}

/// A Noise handshake with the server as an anonymous device: proves the
/// server behind `endpoint` holds `key`.
async fn server_handshake(endpoint: &str, key: &[u8; 32]) -> anyhow::Result<()> {
    let stream = postern_transport::tcp::connect(endpoint, Duration::from_secs(10)).await?;
    let keys = postern_proto::keys::NoiseKeypair::generate();
    let hello = postern_proto::pb::ClientHello {
        version: postern_proto::PROTOCOL_VERSION,
        software: concat!("postern-relay/", env!("CARGO_PKG_VERSION")).into(),
    };
    let (_conn, _hello) =
        postern_transport::client_handshake(stream, &keys, key, &hello, Duration::from_secs(10))
            .await?;
    Ok(())
}

/// `relay add LINK`
pub fn add(home: &Path, link: &str) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let link: RelayLink = read_link(link)?
        .parse()
        .map_err(|e| anyhow::anyhow!("not a relay link: {e}"))?;
    client.add_relay(&link)?;
    println!(
        "Added relay {}. Try it with `postern relay test`.",
        link.describe()
    );
    Ok(())
}

/// `relay list`
pub fn list(home: &Path, json: bool) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let relays = client.relays()?;
    let health = client.routes()?;
    let route_of = |r: &RelayLink| format!("cloak://{}", r.host);
    if json {
        let items: Vec<_> = relays
            .iter()
            .map(|r| {
                let h = health.iter().find(|h| h.route == route_of(&r.link));
                serde_json::json!({
                    "host": r.link.host,
                    "sni": r.link.sni,
                    "name": r.link.name,
                    "source": r.source,
                    "last_ok_ms": h.and_then(|h| h.last_ok_ms),
                    "last_failure": h.and_then(|h| h.last_failure.clone()),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(items));
        return Ok(());
    }
    if relays.is_empty() {
        println!(
            "No relays. Add one with `postern relay add LINK`, or ask the server with `postern relay fetch`."
        );
    }
    for r in &relays {
        let h = health.iter().find(|h| h.route == route_of(&r.link));
        let state = match h {
            Some(h) if h.failures > 0 => format!(
                "failing: {}",
                h.last_failure.as_deref().unwrap_or("unknown")
            ),
            Some(h) if h.last_ok_ms.is_some() => "worked".into(),
            _ => "not tried yet".into(),
        };
        println!("{}  [{}]  {state}", r.link.describe(), r.source);
    }
    Ok(())
}

/// `relay remove WHICH`
pub fn remove(home: &Path, which: &str) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let n = client.remove_relay(which)?;
    anyhow::ensure!(
        n > 0,
        "no relay matches \"{which}\" (give its host:port, name or link)"
    );
    println!("Removed {n} relay(s).");
    Ok(())
}

/// `relay test [WHICH]`: tries each relay (or one) through to the server.
pub async fn test(home: &Path, which: Option<&str>) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let relays: Vec<_> = client
        .relays()?
        .into_iter()
        .filter(|r| which.is_none_or(|w| r.link.host == w || r.link.name.as_deref() == Some(w)))
        .collect();
    anyhow::ensure!(
        !relays.is_empty(),
        "no relay to test{}",
        which
            .map(|w| format!(" matches \"{w}\""))
            .unwrap_or_default()
    );
    let mut failed = 0;
    for r in &relays {
        let Some(c) = Candidate::from_relay(&r.link, 0) else {
            continue;
        };
        match client.probe(&c, Duration::from_secs(10)).await {
            Ok(t) => println!(
                "ok    {}  ({} ms to the server)",
                r.link.describe(),
                t.as_millis()
            ),
            Err((class, e)) => {
                failed += 1;
                println!("FAIL  {}  {class}: {e}", r.link.describe());
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} relay(s) failed", relays.len());
    Ok(())
}

/// `relay approve|retire HOST`, through the operator API.
pub async fn operate(
    op: &crate::legal_cmd::OperatorArgs,
    host: &str,
    action: &str,
) -> anyhow::Result<()> {
    let answer = crate::legal_cmd::call(
        op,
        "POST",
        &format!("/operator/relays/{host}/{action}"),
        None,
    )
    .await?;
    match action {
        "approve" => println!("Relay {host} is active: members are given it from now on."),
        _ => println!(
            "Relay {host} is retired; {} member(s) held it and get others. It sends everything \
             to its cover from its next report on.",
            answer["members_moved"]
        ),
    }
    Ok(())
}

/// `relay status`, through the operator API.
pub async fn status(op: &crate::legal_cmd::OperatorArgs) -> anyhow::Result<()> {
    let answer = crate::legal_cmd::call(op, "GET", "/operator/relays", None).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
