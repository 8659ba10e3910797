//! `postern serve`: configuration layering (defaults < TOML file <
//! environment < flags) and the start-up banner (server link, log key).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use postern_server::config::SmsGatewayKind;
use postern_server::{Server, ServerConfig};

/// Flags of `postern serve`. Each can also be set by the environment
/// variable shown, and in the TOML file given with --config.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see README "Configuration").
    #[arg(long, env = "POSTERN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the database, the server key and the server link live.
    /// Default: $XDG_DATA_HOME/postern.
    #[arg(long, env = "POSTERN_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep accounts, queues and groups in this PostgreSQL database
    /// (postgres://user@host:port/db), which several server nodes can
    /// share. Default: the embedded SQLite file in DATA_DIR.
    #[arg(long, env = "POSTERN_STORE", value_name = "URL")]
    store: Option<String>,
    /// NATS server (nats://host:port) through which several nodes sharing
    /// one PostgreSQL store wake each other. Default: none (one node).
    #[arg(long, env = "POSTERN_NATS", value_name = "URL")]
    nats: Option<String>,
    /// This node's name (letters, digits, '-', '_', '.'). Default: the
    /// name kept in DATA_DIR/node-id, created on first start.
    #[arg(long, env = "POSTERN_NODE", value_name = "NAME")]
    node: Option<String>,
    /// Client listen address (TCP). Default: 127.0.0.1:7447.
    #[arg(long, env = "POSTERN_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// HOST:PORT clients are told to connect to (in the server link).
    /// Default: the listen address.
    #[arg(long, env = "POSTERN_PUBLIC_ADDR", value_name = "HOST:PORT")]
    public_addr: Option<String>,
    /// HTTP API listen address. Default: 127.0.0.1:7448.
    #[arg(long, env = "POSTERN_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Also listen for TLS 1.3 clients on ADDR.
    #[arg(long, env = "POSTERN_TLS_LISTEN", value_name = "ADDR")]
    tls_listen: Option<SocketAddr>,
    /// Also listen for WebSocket-over-TLS clients on ADDR (path: see
    /// --wss-path).
    #[arg(long, env = "POSTERN_WSS_LISTEN", value_name = "ADDR")]
    wss_listen: Option<SocketAddr>,
    /// The path WebSocket clients must ask for. Default: /postern.
    #[arg(long, env = "POSTERN_WSS_PATH", value_name = "PATH")]
    wss_path: Option<String>,
    /// Also listen for QUIC clients on ADDR (UDP).
    #[arg(long, env = "POSTERN_QUIC_LISTEN", value_name = "ADDR")]
    quic_listen: Option<SocketAddr>,
    /// Append registration codes to FILE instead of sending SMS (the
    /// default gateway). Default: DATA_DIR/sms-outbox.jsonl.
    #[arg(long, env = "POSTERN_SMS_OUTBOX", value_name = "FILE")]
    sms_outbox: Option<PathBuf>,
    /// POST registration codes as JSON to URL (a real SMS provider).
    #[arg(
        long,
        env = "POSTERN_SMS_WEBHOOK",
        value_name = "URL",
        conflicts_with = "sms_outbox"
    )]
    sms_webhook: Option<String>,
    /// Log filter (error, warn, info, debug, trace, or a RUST_LOG-style
    /// directive). Default: info.
    #[arg(long, env = "POSTERN_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

impl ServeArgs {
    /// The configuration these arguments describe.
    pub fn config(self) -> anyhow::Result<ServerConfig> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid config file", path.display()))?
            }
            None => ServerConfig::default(),
        };
        if let Some(d) = self.data_dir {
            cfg.data_dir = d;
        }
        if let Some(url) = self.store {
            cfg.store = Some(url);
        }
        if let Some(url) = self.nats {
            cfg.node.nats = Some(url);
        }
        if let Some(name) = self.node {
            cfg.node.name = Some(name);
        }
        if let Some(a) = self.listen {
            cfg.listen = a;
        }
        if let Some(a) = self.public_addr {
            cfg.public_addr = Some(a);
        }
        if let Some(a) = self.http_listen {
            cfg.http_listen = a;
        }
        if let Some(a) = self.tls_listen {
            cfg.carriers.tls = Some(a);
        }
        if let Some(a) = self.wss_listen {
            cfg.carriers.wss = Some(a);
        }
        if let Some(p) = self.wss_path {
            cfg.carriers.wss_path = p;
        }
        if let Some(a) = self.quic_listen {
            cfg.carriers.quic = Some(a);
        }
        if let Some(f) = self.sms_outbox {
            cfg.sms.gateway = SmsGatewayKind::Outbox;
            cfg.sms.outbox = Some(f);
        }
        if let Some(url) = self.sms_webhook {
            cfg.sms.gateway = SmsGatewayKind::Webhook;
            cfg.sms.webhook_url = Some(url);
        }
        Ok(cfg)
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let sms = match cfg.sms.gateway {
        SmsGatewayKind::Outbox => format!(
            "appended to {}",
            cfg.sms
                .outbox
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("sms-outbox.jsonl"))
                .display()
        ),
        SmsGatewayKind::Webhook => "posted to the configured webhook".to_owned(),
    };
    let data_dir = cfg.data_dir.clone();
    // The URL may carry a password: name the kind of store only.
    let store = match &cfg.store {
        Some(_) => "PostgreSQL".to_owned(),
        None => format!("SQLite, {}", data_dir.join("postern.db").display()),
    };
    let nats = cfg.node.nats.is_some();
    let server = Server::start(cfg).await?;
    let link = server.link.to_string();
    println!("Postern server {} is running.", env!("CARGO_PKG_VERSION"));
    println!("  data dir:   {}", data_dir.display());
    println!("  node:       {}", server.node);
    println!("  store:      {store}");
    if nats {
        println!("  NATS:       connected (wake-ups between nodes)");
    }
    println!("  clients:    {} (TCP, Noise IK)", server.client_addr);
    if let Some(a) = server.carriers.tls {
        println!("              {a} (TLS 1.3)");
    }
    if let Some(a) = server.carriers.wss {
        println!("              {a} (WebSocket over TLS)");
    }
    if let Some(a) = server.carriers.quic {
        println!("              {a} (QUIC, UDP)");
    }
    println!("  HTTP API:   http://{}/health", server.http_addr);
    println!("  SMS codes:  {sms}");
    let log_url = format!("http://{}/log", server.http_addr);
    if let Some(log) = server.transparency() {
        let policy = log.policy();
        println!(
            "  log:        {log_url}/checkpoint (witnesses: {}, quorum {})",
            policy.witnesses.len(),
            policy.quorum
        );
    }
    println!();
    println!(
        "Server link (also in {}):",
        data_dir.join("server-link.txt").display()
    );
    println!("  {link}");
    println!();
    if let Some(key) = &server.log_key {
        println!(
            "Transparency log key (also in {}):",
            data_dir.join("log-vkey.txt").display()
        );
        println!("  {}", key.vkey());
        println!("Check the log:");
        println!(
            "  postern transparency verify --log {log_url} --log-key '{}'",
            key.vkey()
        );
        println!();
    }
    println!("Connect a member:");
    println!("  postern --home alice setup '{link}'");
    println!("  postern --home alice register +14155552671");
    println!();
    println!(
        "Conversations are end-to-end encrypted (MLS): this server stores and forwards ciphertext only."
    );
    println!("Stop with Ctrl-C or SIGTERM (the node drains: clients are told to move).");
    shutdown_signal().await;
    println!("Draining…");
    server.drain().await;
    println!("Stopped.");
    Ok(())
}

pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: super::ServeArgs,
    }

    fn config(args: &[&str]) -> postern_server::ServerConfig {
        let parsed = Serve::try_parse_from(std::iter::once("serve").chain(args.iter().copied()));
        parsed.unwrap().args.config().unwrap()
    }

    #[test]
    fn store_selects_postgres_and_defaults_to_sqlite() {
        let url = "postgres://postern@db.internal:5432/postern";
        assert_eq!(config(&["--store", url]).store.as_deref(), Some(url));
        if std::env::var_os("POSTERN_STORE").is_none() {
            assert_eq!(config(&[]).store, None);
        }
    }
}
