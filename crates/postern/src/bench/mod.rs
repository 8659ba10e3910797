//! `postern bench`: measurements of a real server process over real
//! loopback sockets.
//!
//! The server runs as a child process (`postern serve` with a generated
//! config in a temporary directory), so its memory can be read from /proc
//! and the load generator's work does not count as the server's. The load
//! generator speaks the wire protocol directly (no client home), so what it
//! measures is the server and its store, not client-side SQLite.

use std::collections::HashMap;
use std::io::{BufRead, Seek};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use postern_proto::frame::envelope;
use postern_proto::ids::DeviceAddr;
use postern_proto::keys::{NoiseKeypair, sign_device_binding};
use postern_proto::link::ServerLink;
use postern_proto::pb::{self, envelope::Body, request::Kind as Req, response::Kind as Resp};
use postern_transport::{ConnReader, ConnWriter};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

mod failover;
mod mls;
mod mqtt;
mod relay;

/// What to measure.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Messages/s and send-to-receive latency, 1:1, through the durable store.
    Delivery(DeliveryArgs),
    /// Server memory per idle, authenticated, subscribed connection.
    Idle(IdleArgs),
    /// The `delivery` traffic through an MQTT broker (QoS 1), for comparison.
    Mqtt(mqtt::MqttArgs),
    /// MLS costs by group size: join, message, add and remove commits.
    Mls(mls::MlsArgs),
    /// Time from the route in use being blocked to the next message
    /// delivered over another route, with three dead routes ahead of the
    /// working one.
    Failover(failover::FailoverArgs),
    /// A reconnect storm: many registered clients connecting at once;
    /// accept rate and server memory.
    Storm(StormArgs),
    /// Throughput through the relay against socat and shadowsocks-rust,
    /// and the relay's memory per idle connection with many open.
    Relay(relay::RelayArgs),
}

/// The traffic of one delivery run; `bench delivery` and `bench mqtt` take
/// the same options so that their figures compare.
#[derive(clap::Args)]
pub struct Traffic {
    /// Sender/receiver pairs (2 connections each).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Offered load in messages/s over all senders; 0 sends as fast as the
    /// server accepts (throughput). Use about half the measured throughput
    /// to read latency at moderate load.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Sends each sender keeps in flight.
    #[arg(long, default_value_t = 64)]
    window: usize,
}

impl Traffic {
    /// Checks the options; returns the messages each sender sends.
    fn per_sender(&self) -> anyhow::Result<u64> {
        if self.pairs == 0 || self.messages == 0 || self.window == 0 {
            bail!("--pairs, --messages and --window must be at least 1");
        }
        if self.size < 8 || self.size > postern_proto::MAX_PAYLOAD_LEN {
            bail!(
                "--size must be between 8 and {}",
                postern_proto::MAX_PAYLOAD_LEN
            );
        }
        let per_sender = self.messages / self.pairs as u64;
        if per_sender == 0 {
            bail!("--messages must be at least --pairs");
        }
        Ok(per_sender)
    }

    /// "N messages of S bytes from P senders at R msg/s", for progress lines.
    fn describe(&self, total: u64, senders: &str) -> String {
        let rate = if self.rate > 0 {
            format!(" at {} msg/s", self.rate)
        } else {
            String::new()
        };
        format!(
            "{total} messages of {} bytes from {} {senders}{rate}",
            self.size, self.pairs
        )
    }

    /// Each sender's share of `--rate`, if pacing.
    fn sender_rate(&self) -> Option<f64> {
        (self.rate > 0).then(|| self.rate as f64 / self.pairs as f64)
    }
}

/// What one delivery run measured, printed the same way for every system:
/// a line for people and a JSON line for scripts.
struct Report<'a> {
    bench: &'static str,
    traffic: &'a Traffic,
    synchronous: &'a str,
    /// "sqlite", "postgres" or "broker", and how many server nodes.
    store: &'a str,
    nodes: usize,
    messages: u64,
    server_rss_kib: u64,
    run: Run,
}

/// What the clock, the receivers and /proc said about one run.
struct Run {
    /// Until the last message was received.
    elapsed: Duration,
    /// Until the last send was acknowledged.
    accepted: Duration,
    /// Send-to-receive latencies in µs, any order.
    latencies: Vec<u32>,
    /// CPU time the server and this load generator used during the run,
    /// if known: steadier than msg/s on a shared machine.
    server_cpu: Option<Duration>,
    generator_cpu: Option<Duration>,
}

impl Run {
    /// Waits for every sender, then every receiver (which return their
    /// latencies), and reads the clocks.
    async fn collect(
        mut senders: tokio::task::JoinSet<anyhow::Result<()>>,
        mut receivers: tokio::task::JoinSet<anyhow::Result<Vec<u32>>>,
        start: Instant,
        cpu: CpuMeter,
    ) -> anyhow::Result<Run> {
        while let Some(r) = senders.join_next().await {
            r??;
        }
        let accepted = start.elapsed();
        let mut latencies = Vec::new();
        while let Some(r) = receivers.join_next().await {
            latencies.extend(r??);
        }
        let (server_cpu, generator_cpu) = cpu.stop();
        Ok(Run {
            elapsed: start.elapsed(),
            accepted,
            latencies,
            server_cpu,
            generator_cpu,
        })
    }
}

impl Report<'_> {
    /// CPU per message in µs, to 0.1 µs (the clock ticks at 10 ms).
    fn per_message_us(&self, cpu: Duration) -> f64 {
        (cpu.as_secs_f64() * 1e7 / self.messages as f64).round() / 10.0
    }

    fn print(mut self) {
        self.run.latencies.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let pct = |p: f64| {
            let i = ((self.run.latencies.len() as f64 * p) as usize)
                .min(self.run.latencies.len().saturating_sub(1));
            self.run.latencies.get(i).copied().map(ms).unwrap_or(0.0)
        };
        let rate = self.messages as f64 / self.run.elapsed.as_secs_f64();
        let (p50, p99) = (pct(0.50), pct(0.99));
        println!(
            "delivered {} messages in {:.2} s: {rate:.0} msg/s; latency p50 {p50:.1} ms, p99 {p99:.1} ms",
            self.messages,
            self.run.elapsed.as_secs_f64(),
        );
        let result = serde_json::json!({
            "bench": self.bench,
            "pairs": self.traffic.pairs,
            "messages": self.messages,
            "size": self.traffic.size,
            "offered_rate": self.traffic.rate,
            "synchronous": self.synchronous,
            "store": self.store,
            "nodes": self.nodes,
            "seconds": self.run.elapsed.as_secs_f64(),
            "accepted_seconds": self.run.accepted.as_secs_f64(),
            "messages_per_second": rate,
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "latency_ms_max": self.run.latencies.last().copied().map(ms).unwrap_or(0.0),
            "server_rss_mib": self.server_rss_kib as f64 / 1024.0,
            "server_cpu_us_per_message": self.run.server_cpu.map(|c| self.per_message_us(c)),
            "generator_cpu_us_per_message": self.run.generator_cpu.map(|c| self.per_message_us(c)),
        });
        if let (Some(s), Some(g)) = (self.run.server_cpu, self.run.generator_cpu) {
            println!(
                "cpu per message: server {:.1} µs, load generator {:.1} µs",
                self.per_message_us(s),
                self.per_message_us(g),
            );
        }
        println!("{result}");
    }
}

/// CPU time (user + system, all threads) process `pid` has used, from
/// Linux /proc; `None` elsewhere.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line, in USER_HZ (100 on Linux) ticks.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU used by `pid` and by this process between two readings.
struct CpuMeter {
    servers: Vec<u32>,
    at_start: (Option<Duration>, Option<Duration>),
}

/// CPU time of every process in `pids` together.
fn cpu_time_all(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|p| cpu_time(*p)).sum()
}

impl CpuMeter {
    fn start(server: Option<u32>) -> Self {
        Self::start_all(server.into_iter().collect())
    }

    /// Server CPU is the sum over `servers` (several nodes).
    fn start_all(servers: Vec<u32>) -> Self {
        let at_start = (cpu_time_all(&servers), cpu_time(std::process::id()));
        CpuMeter { servers, at_start }
    }

    /// (server, this process) CPU since `start`.
    fn stop(&self) -> (Option<Duration>, Option<Duration>) {
        let since =
            |now: Option<Duration>, then: Option<Duration>| Some(now?.saturating_sub(then?));
        (
            since(cpu_time_all(&self.servers), self.at_start.0),
            since(cpu_time(std::process::id()), self.at_start.1),
        )
    }
}

/// Resident memory of process `pid` in KiB, from Linux /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Options of `postern bench delivery`.
#[derive(clap::Args)]
pub struct DeliveryArgs {
    #[command(flatten)]
    traffic: Traffic,
    /// SQLite synchronous mode of the server: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Run the server(s) on this PostgreSQL database instead of SQLite
    /// (postgres://user@host:port/db); the run uses a fresh schema in it
    /// and drops it afterwards.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Server nodes sharing the PostgreSQL store; with 2, every sender is
    /// on one node and its receiver on the other, so every message needs
    /// a NATS wake-up and a fetch from the database.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// NATS server for several nodes.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
}

/// Options of `postern bench storm`.
#[derive(clap::Args)]
pub struct StormArgs {
    /// Clients reconnecting at once.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
}

/// Options of `postern bench idle`.
#[derive(clap::Args)]
pub struct IdleArgs {
    /// Idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    raise_fd_limit();
    match cmd {
        BenchCommand::Delivery(a) => delivery(a).await,
        BenchCommand::Idle(a) => idle(a).await,
        BenchCommand::Mqtt(a) => mqtt::run(a).await,
        BenchCommand::Mls(a) => tokio::task::spawn_blocking(move || mls::run(a)).await?,
        BenchCommand::Failover(a) => failover::failover(a).await,
        BenchCommand::Storm(a) => storm(a).await,
        BenchCommand::Relay(a) => relay::run(a).await,
    }
}

/// Raises this process's open-file limit: to 65,536 if it may raise the
/// hard limit (root), else to the hard limit. Many sockets.
pub fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let want = hard.max(65_536);
        if rlimit::Resource::NOFILE.set(want, want).is_err() {
            let _ = rlimit::Resource::NOFILE.set(hard, hard);
        }
    }
}

/// A `postern serve` child process with a bench configuration.
struct ServerProcess {
    child: tokio::process::Child,
    link: ServerLink,
    outbox: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

/// How a bench server node differs from the single SQLite default.
#[derive(Default)]
struct NodeSetup {
    store: Option<String>,
    nats: Option<String>,
    /// Share this outbox file (nodes of one deployment).
    outbox: Option<PathBuf>,
    /// Use this node's Noise key (nodes of one deployment share it).
    key_from: Option<PathBuf>,
}

impl ServerProcess {
    async fn start(synchronous: &str) -> anyhow::Result<Self> {
        Self::start_node(synchronous, &NodeSetup::default()).await
    }

    async fn start_node(synchronous: &str, node: &NodeSetup) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        let outbox = node
            .outbox
            .clone()
            .unwrap_or_else(|| dir.path().join("outbox.jsonl"));
        let port = free_port()?;
        let http = free_port()?;
        let mut config = format!(
            "data_dir = {data:?}\nlisten = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             sqlite_synchronous = {synchronous:?}\n"
        );
        if let Some(store) = &node.store {
            config.push_str(&format!("store = {store:?}\n"));
        }
        config.push_str(&format!(
            "[sms]\noutbox = {outbox:?}\n[limits]\n\
             max_connections = 1000000\ncode_interval = 0\ncodes_per_phone_per_hour = 1000000\n\
             code_requests_per_ip_per_hour = 1000000\nverify_attempts_per_ip_per_hour = 1000000\n"
        ));
        if let Some(nats) = &node.nats {
            config.push_str(&format!("[node]\nnats = {nats:?}\n"));
        }
        if let Some(key) = &node.key_from {
            std::fs::create_dir_all(&data)?;
            std::fs::copy(key, data.join("server.key"))
                .context("cannot copy the first node's key")?;
        }
        let config_path = dir.path().join("bench.toml");
        std::fs::write(&config_path, config)?;
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("POSTERN_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server process")?;
        let link_path = data.join("server-link.txt");
        let key = data.join("server.key");
        let deadline = Instant::now() + Duration::from_secs(30);
        let link = loop {
            if let Ok(text) = std::fs::read_to_string(&link_path)
                && let Ok(link) = text.trim().parse::<ServerLink>()
                && TcpStream::connect(("127.0.0.1", port)).await.is_ok()
            {
                break link;
            }
            if Instant::now() > deadline {
                bail!("the server did not start within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(ServerProcess {
            child,
            link,
            outbox,
            key,
            _dir: dir,
        })
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("the server exited")?;
        rss_kib(pid).context("reading server memory needs Linux /proc")
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Reads codes from the outbox file incrementally (it grows by a line per
/// registration; rereading it whole each time would be quadratic).
struct Outbox {
    path: PathBuf,
    offset: u64,
    codes: HashMap<String, String>,
}

impl Outbox {
    fn code(&mut self, phone: &str) -> anyhow::Result<Option<String>> {
        if let Some(c) = self.codes.remove(phone) {
            return Ok(Some(c));
        }
        let mut f = std::io::BufReader::new(std::fs::File::open(&self.path)?);
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut line = String::new();
        while f.read_line(&mut line)? > 0 {
            if !line.ends_with('\n') {
                break;
            }
            self.offset += line.len() as u64;
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if let (Some(p), Some(c)) = (v["phone"].as_str(), v["code"].as_str()) {
                self.codes.insert(p.to_owned(), c.to_owned());
            }
            line.clear();
        }
        Ok(self.codes.remove(phone))
    }
}

type Reader = ConnReader<ReadHalf<TcpStream>>;
type Writer = ConnWriter<WriteHalf<TcpStream>>;

/// A bench device: its key and, once registered, its address.
struct Device {
    keys: NoiseKeypair,
    addr: DeviceAddr,
}

async fn open(
    link: &ServerLink,
    keys: &NoiseKeypair,
) -> anyhow::Result<(Reader, Writer, pb::ServerHello)> {
    let stream = postern_transport::tcp::connect(&link.tcp[0], Duration::from_secs(30)).await?;
    let hello = pb::ClientHello {
        version: postern_proto::PROTOCOL_VERSION,
        software: "postern-bench".into(),
    };
    let (conn, server_hello) = postern_transport::client_handshake(
        stream,
        keys,
        &link.noise_key,
        &hello,
        Duration::from_secs(30),
    )
    .await?;
    let (r, w) = conn.split();
    Ok((r, w, server_hello))
}

async fn call(r: &mut Reader, w: &mut Writer, req: Req) -> anyhow::Result<Resp> {
    w.send(&envelope(1, Body::Request(pb::Request { kind: Some(req) })))
        .await?;
    loop {
        let env = r
            .recv()
            .await?
            .context("the server closed the connection")?;
        if let Some(Body::Response(resp)) = env.body {
            return match resp.kind {
                Some(Resp::Error(e)) => bail!("server refused: {}", e.message),
                Some(k) => Ok(k),
                None => bail!("empty response"),
            };
        }
    }
}

/// Registers `n` devices, `parallel` at a time, printing progress.
async fn register_many(
    server: &ServerProcess,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Device>> {
    let outbox = Arc::new(Mutex::new(Outbox {
        path: server.outbox.clone(),
        offset: 0,
        codes: HashMap::new(),
    }));
    let gate = Arc::new(Semaphore::new(parallel));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (link, outbox, gate, done) = (
            server.link.clone(),
            outbox.clone(),
            gate.clone(),
            done.clone(),
        );
        tasks.spawn(async move {
            let _permit = gate.acquire().await?;
            // +1 NXX 2XX XXXX: valid North American numbers, distinct per i.
            let phone = format!(
                "+1{}{:03}{:04}",
                [415, 650, 212, 305][i % 4],
                200 + (i / 4) / 10_000,
                (i / 4) % 10_000
            );
            let keys = NoiseKeypair::generate();
            let (mut r, mut w, _) = open(&link, &keys).await?;
            call(
                &mut r,
                &mut w,
                Req::RequestCode(pb::RequestCode {
                    phone: phone.clone(),
                }),
            )
            .await?;
            let code = outbox
                .lock()
                .await
                .code(&phone)?
                .context("no code in the outbox")?;
            let identity = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            let device = pb::DeviceKeys {
                identity_key: identity.verifying_key().to_bytes().to_vec().into(),
                binding_signature: sign_device_binding(&identity, &keys.public).to_vec().into(),
                name: "bench".into(),
            };
            let resp = call(
                &mut r,
                &mut w,
                Req::Register(pb::Register {
                    phone,
                    code,
                    device: Some(device),
                    username: String::new(),
                    invite: String::new(),
                }),
            )
            .await?;
            let Resp::Registered(reg) = resp else {
                bail!("unexpected answer to register")
            };
            let addr = DeviceAddr::try_from(reg.device.as_ref().context("no device")?)?;
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            if d % 1000 == 0 {
                eprintln!("  registered {d}/{n}");
            }
            Ok::<_, anyhow::Error>((i, Device { keys, addr }))
        });
    }
    let mut devices: Vec<Option<Device>> = (0..n).map(|_| None).collect();
    while let Some(res) = tasks.join_next().await {
        let (i, d) = res??;
        devices[i] = Some(d);
    }
    Ok(devices.into_iter().flatten().collect())
}

async fn delivery(a: DeliveryArgs) -> anyhow::Result<()> {
    let schema = format!("postern_bench_{}", std::process::id());
    let store = match &a.store {
        None => None,
        Some(url) => Some(
            postern_store::PgStore::create_schema(url, &schema)
                .await
                .context("cannot create the bench schema in the PostgreSQL database")?,
        ),
    };
    let result = delivery_on(&a, store).await;
    if let Some(url) = &a.store
        && let Err(e) = postern_store::PgStore::drop_schema(url, &schema).await
    {
        eprintln!("warning: could not drop the bench schema {schema}: {e}");
    }
    result
}

async fn delivery_on(a: &DeliveryArgs, store: Option<String>) -> anyhow::Result<()> {
    let t = &a.traffic;
    let per_sender = t.per_sender()?;
    if a.nodes == 0 || a.nodes > 2 {
        bail!("--nodes must be 1 or 2");
    }
    if a.nodes > 1 && store.is_none() {
        bail!("several nodes need a shared store: give --store postgres://…");
    }
    let what = match &store {
        None => format!("SQLite, synchronous={}", a.synchronous),
        Some(_) => "PostgreSQL".to_owned(),
    };
    eprintln!(
        "Starting {} server node{} ({what})…",
        a.nodes,
        if a.nodes > 1 { "s" } else { "" }
    );
    let mut setup = NodeSetup {
        store: store.clone(),
        nats: (a.nodes > 1).then(|| a.nats.clone()),
        ..NodeSetup::default()
    };
    let server = ServerProcess::start_node(&a.synchronous, &setup).await?;
    setup.outbox = Some(server.outbox.clone());
    setup.key_from = Some(server.key.clone());
    let mut nodes = vec![server];
    if a.nodes > 1 {
        nodes.push(ServerProcess::start_node(&a.synchronous, &setup).await?);
    }
    let server = &nodes[0];
    eprintln!("Registering {} devices…", t.pairs * 2);
    let devices = register_many(server, t.pairs * 2, 64).await?;
    let total = per_sender * t.pairs as u64;
    let base = Instant::now();
    let mut receivers = tokio::task::JoinSet::new();
    let mut senders = Vec::new();
    // Connect and subscribe every receiver before any sender starts.
    for pair in devices.chunks(2) {
        let [sender, receiver] = pair else { continue };
        let (mut r, mut w, _) = open(&nodes[nodes.len() - 1].link, &receiver.keys).await?;
        call(
            &mut r,
            &mut w,
            Req::Subscribe(pb::Subscribe { after_seq: 0 }),
        )
        .await?;
        receivers.spawn(receive(r, w, per_sender, base));
        senders.push((sender, receiver.addr));
    }
    eprintln!("Sending {}…", t.describe(total, "senders"));
    let start = Instant::now();
    let cpu = CpuMeter::start_all(nodes.iter().filter_map(|n| n.child.id()).collect());
    let mut send_tasks = tokio::task::JoinSet::new();
    for (sender, to) in senders {
        let (r, w, _) = open(&server.link, &sender.keys).await?;
        send_tasks.spawn(send(
            r,
            w,
            to,
            per_sender,
            t.size,
            t.window,
            t.sender_rate(),
            base,
        ));
    }
    let run = Run::collect(send_tasks, receivers, start, cpu).await?;
    Report {
        bench: "delivery",
        traffic: t,
        synchronous: &a.synchronous,
        store: if store.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        nodes: nodes.len(),
        messages: total,
        server_rss_kib: nodes.iter().map(|n| n.rss_kib().unwrap_or(0)).sum(),
        run,
    }
    .print();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn send(
    mut r: Reader,
    mut w: Writer,
    to: DeviceAddr,
    count: u64,
    size: usize,
    window: usize,
    rate: Option<f64>,
    base: Instant,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(window));
    let acks = {
        let permits = permits.clone();
        tokio::spawn(async move {
            let mut confirmed = 0;
            while confirmed < count {
                let env = r
                    .recv()
                    .await?
                    .context("the server closed the connection")?;
                match env.body {
                    Some(Body::Response(pb::Response {
                        kind: Some(Resp::Sent(_)),
                    })) => {
                        confirmed += 1;
                        permits.add_permits(1);
                    }
                    Some(Body::Response(pb::Response {
                        kind: Some(Resp::Error(e)),
                    })) => {
                        bail!("send refused: {}", e.message)
                    }
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut payload = vec![0x5a; size];
    let mut sent = 0u64;
    let mut batch = Vec::with_capacity(window);
    while sent < count {
        if let Some(rate) = rate {
            let due = base + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let first = permits.acquire().await?;
        first.forget();
        let mut n = 1;
        while n < window && sent + (n as u64) < count && rate.is_none() {
            match permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    n += 1;
                }
                Err(_) => break,
            }
        }
        batch.clear();
        for _ in 0..n {
            let stamp = base.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&stamp.to_be_bytes());
            let id = postern_proto::ids::new_message_id();
            batch.push(envelope(
                sent + 1,
                Body::Request(pb::Request {
                    kind: Some(Req::Send(pb::Send {
                        client_message_id: id.to_vec().into(),
                        to_account_id: to.account.0.to_vec().into(),
                        payload: payload.clone().into(),
                    })),
                }),
            ));
            sent += 1;
        }
        w.send_batch(batch.iter()).await?;
    }
    acks.await??;
    Ok(())
}

/// Receives `count` messages, acking each push; returns latencies in µs.
async fn receive(
    mut r: Reader,
    mut w: Writer,
    count: u64,
    base: Instant,
) -> anyhow::Result<Vec<u32>> {
    let mut latencies = Vec::with_capacity(count as usize);
    while (latencies.len() as u64) < count {
        let env = tokio::time::timeout(Duration::from_secs(60), r.recv())
            .await
            .context("no message for 60 s")??
            .context("the server closed the connection")?;
        if let Some(Body::Push(pb::Push {
            kind: Some(pb::push::Kind::Deliver(d)),
        })) = env.body
        {
            let now = base.elapsed().as_nanos() as u64;
            let mut last = 0;
            for m in &d.messages {
                let sent = m
                    .payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                let micros = now.saturating_sub(sent.unwrap_or(now)) / 1000;
                latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                last = m.seq;
            }
            w.send(&envelope(
                0,
                Body::Request(pb::Request {
                    kind: Some(Req::Ack(pb::Ack { up_to_seq: last })),
                }),
            ))
            .await?;
        }
    }
    Ok(latencies)
}

/// Registers the clients, then has all of them open an authenticated,
/// subscribed session at the same instant (as after a network comes back
/// or a route is unblocked); measures sessions accepted per second, how
/// many failed, and the server's memory at the peak and after.
async fn storm(a: StormArgs) -> anyhow::Result<()> {
    eprintln!("Starting a server…");
    let server = ServerProcess::start("full").await?;
    eprintln!("Registering {} devices…", a.clients);
    let devices = register_many(&server, a.clients, 64).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = server.rss_kib()?;
    eprintln!("{} clients reconnect at once…", a.clients);
    let start = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for d in devices {
        let (link, start) = (server.link.clone(), start.clone());
        tasks.spawn(async move {
            start.notified().await;
            let opened = async {
                let (mut r, mut w, hello) = open(&link, &d.keys).await?;
                if hello.device.is_none() {
                    bail!("not authenticated");
                }
                call(
                    &mut r,
                    &mut w,
                    Req::Subscribe(pb::Subscribe { after_seq: 0 }),
                )
                .await?;
                Ok((r, w))
            };
            let result = opened.await;
            (result, Instant::now())
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let began = Instant::now();
    start.notify_waiters();
    let mut held = Vec::new();
    let mut failed = 0usize;
    let mut last = began;
    let mut peak = before;
    let mut sample = Instant::now();
    while let Some(done) = tasks.join_next().await {
        let (result, at) = done?;
        match result {
            Ok(conn) => {
                held.push(conn);
                last = last.max(at);
            }
            Err(_) => failed += 1,
        }
        if sample.elapsed() > Duration::from_millis(100) {
            peak = peak.max(server.rss_kib()?);
            sample = Instant::now();
        }
    }
    let took = last - began;
    peak = peak.max(server.rss_kib()?);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = server.rss_kib()?;
    let rate = held.len() as f64 / took.as_secs_f64();
    println!(
        "{} clients at once: {} sessions in {:.2} s ({:.0}/s), {} failed; server RSS {} KiB before, {} KiB peak, {} KiB after",
        a.clients,
        held.len(),
        took.as_secs_f64(),
        rate,
        failed,
        before,
        peak,
        after
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "storm",
            "clients": a.clients,
            "sessions": held.len(),
            "failed": failed,
            "seconds": took.as_secs_f64(),
            "sessions_per_second": rate,
            "server_rss_kib_before": before,
            "server_rss_kib_peak": peak,
            "server_rss_kib_after": after,
        })
    );
    drop(held);
    Ok(())
}

async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    eprintln!("Starting a server…");
    let server = ServerProcess::start("full").await?;
    eprintln!("Registering {} devices…", a.connections);
    let devices = register_many(&server, a.connections, 64).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = server.rss_kib()?;
    eprintln!(
        "Opening {} authenticated, subscribed connections…",
        a.connections
    );
    let mut held = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let (mut r, mut w, hello) = open(&server.link, &d.keys).await?;
        if hello.device.is_none() {
            bail!("device {} was not authenticated", d.addr);
        }
        call(
            &mut r,
            &mut w,
            Req::Subscribe(pb::Subscribe { after_seq: 0 }),
        )
        .await?;
        held.push((r, w));
        if (i + 1) % 1000 == 0 {
            eprintln!("  {}/{}", i + 1, a.connections);
        }
    }
    // Past the server's 5 s quiet period, after which a connection gives
    // back spare buffer memory: this measures connections that are idle.
    eprintln!("Waiting 7 s for the connections to go quiet…");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = server.rss_kib()?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / a.connections as f64;
    let result = serde_json::json!({
        "bench": "idle",
        "connections": a.connections,
        "server_rss_kib_before": before,
        "server_rss_kib_after": after,
        "bytes_per_connection": per,
    });
    println!(
        "{} idle connections: server RSS {} KiB -> {} KiB, {:.0} bytes ({:.2} KiB) per connection",
        a.connections,
        before,
        after,
        per,
        per / 1024.0
    );
    println!("{result}");
    drop(held);
    Ok(())
}
