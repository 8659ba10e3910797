//! `postern bench relay`: bulk throughput through the relay against a
//! plain TCP forwarder (socat) and shadowsocks-rust in the same run, then
//! the relay's memory per idle established connection with many open.
//!
//! Every forwarder runs as its own process in front of the same sink (a
//! TCP listener in this process that counts what arrives and answers with
//! the count). The relay is `postern relay` (this binary) with a local
//! HTTPS cover; its client — the cloak handshake and records — runs in
//! this process, as shadowsocks' client (`sslocal`, a separate process)
//! does its encryption for it. Throughput is bytes from the first write to
//! the sink's acknowledgement of the last byte.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{free_port, rss_kib};

/// Options of `postern bench relay`.
#[derive(clap::Args)]
pub struct RelayArgs {
    /// MiB sent through each forwarder per run.
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Runs per forwarder (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Idle connections to hold open through the relay for the memory
    /// figure (each is a completed cloak handshake with a connection on to
    /// the server side). The relay needs two open files per connection: the
    /// default fits a hard limit of 20,000 (`ulimit -Hn`).
    #[arg(long, default_value_t = 9_800)]
    idle: usize,
    /// The socat binary.
    #[arg(long, default_value = "socat")]
    socat: String,
    /// Internal: only run the sink on this address (the bench starts
    /// itself this way, so the sink's sockets do not count against its
    /// own open-file limit).
    #[arg(long, hide = true, value_name = "ADDR")]
    sink_only: Option<String>,
    /// A directory holding shadowsocks-rust's `ssserver` and `sslocal`
    /// (`cargo install shadowsocks-rust --locked --root DIR` puts them in
    /// DIR/bin); skipped with a note if absent.
    #[arg(long, value_name = "DIR")]
    shadowsocks: Option<PathBuf>,
}

/// A position-dependent checksum of a byte stream (Fletcher-like, over
/// 8-byte words, with a carry for reads that split a word): catches lost,
/// altered and reordered data at a small fraction of a byte's cost.
#[derive(Default)]
struct StreamSum {
    a: u64,
    b: u64,
    carry: [u8; 8],
    carried: usize,
}

impl StreamSum {
    fn word(&mut self, w: u64) {
        self.a = self.a.wrapping_add(w);
        self.b = self.b.wrapping_add(self.a);
    }

    fn update(&mut self, mut data: &[u8]) {
        if self.carried > 0 {
            let take = (8 - self.carried).min(data.len());
            self.carry[self.carried..self.carried + take].copy_from_slice(&data[..take]);
            self.carried += take;
            data = &data[take..];
            if self.carried < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.carry));
            self.carried = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    fn finish(mut self) -> [u8; 16] {
        if self.carried > 0 {
            self.carry[self.carried..].fill(0);
            self.word(u64::from_le_bytes(self.carry) ^ (self.carried as u64) << 56);
        }
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.a.to_be_bytes());
        out[8..].copy_from_slice(&self.b.to_be_bytes());
        out
    }
}

/// The sink: reads each connection to EOF, answers with the byte count
/// (8 bytes, big-endian) and the stream's checksum (16 bytes), and keeps the
/// connection until the peer closes.
async fn sink(bind: &str) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut n = 0u64;
                let mut sum = StreamSum::default();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(got) => {
                            n += got as u64;
                            sum.update(&buf[..got]);
                        }
                        Err(_) => return,
                    }
                }
                let mut answer = n.to_be_bytes().to_vec();
                answer.extend_from_slice(&sum.finish());
                let _ = s.write_all(&answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Sends `bytes` of pseudo-random data over `stream`, half-closes, and
/// waits for the sink's count and checksum, which must match what was
/// sent; returns the elapsed time.
async fn push<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    bytes: u64,
) -> anyhow::Result<Duration> {
    use rand::{RngCore, SeedableRng};
    // Four different chunks in turn, so whole chunks cannot swap unseen.
    let mut rng = rand::rngs::StdRng::seed_from_u64(bytes);
    let chunks: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            let mut c = vec![0u8; 64 * 1024];
            rng.fill_bytes(&mut c);
            c
        })
        .collect();
    let mut expected = StreamSum::default();
    let mut left = bytes;
    let mut i = 0;
    while left > 0 {
        let n = left.min(chunks[0].len() as u64) as usize;
        expected.update(&chunks[i % 4][..n]);
        left -= n as u64;
        i += 1;
    }
    let start = Instant::now();
    let mut left = bytes;
    let mut i = 0;
    while left > 0 {
        let n = left.min(chunks[0].len() as u64) as usize;
        stream.write_all(&chunks[i % 4][..n]).await?;
        left -= n as u64;
        i += 1;
    }
    stream.shutdown().await?;
    let mut answer = [0u8; 24];
    stream
        .read_exact(&mut answer)
        .await
        .context("the sink's acknowledgement did not come back")?;
    let elapsed = start.elapsed();
    let count = u64::from_be_bytes(answer[..8].try_into().expect("8 bytes"));
    anyhow::ensure!(count == bytes, "the sink got {count} bytes of {bytes}");
    anyhow::ensure!(
        answer[8..] == expected.finish(),
        "the sink got {bytes} bytes, but not the ones sent (checksum mismatch)"
    );
    Ok(elapsed)
}

/// A child process killed on drop.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn wait_listening(addr: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {addr}")
}

/// `postern relay` in front of a local cover, forwarding to `sink`;
/// returns the child, its address and the relay secret.
async fn start_relay(
    dir: &Path,
    sink: std::net::SocketAddr,
    cover: std::net::SocketAddr,
) -> anyhow::Result<(Child, String, postern_cloak::ClientConfig)> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    // The relay never checks the server's key (it forwards bytes); any key
    // makes a valid link.
    let server = format!("postern://server?v=1&tcp={sink}&key={}", "A".repeat(43));
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["relay", "--listen", &listen, "--cover"])
        .arg(cover.to_string())
        .args(["--sni", postern_relay::testing::SNI, "--server", &server])
        .arg("--data-dir")
        .arg(dir.join("relay"))
        .args(["--no-register", "--max-connections", "30000"])
        .stdout(Stdio::piped())
        // Its warnings and errors, if any, belong in the bench's output.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start `postern relay`")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let link = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("postern://relay?") {
                return anyhow::Ok(line);
            }
        }
        bail!("the relay exited without printing its link")
    })
    .await
    .context("the relay did not start in 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let link: postern_proto::link::RelayLink = link.parse()?;
    let cfg = postern_cloak::ClientConfig {
        secret: postern_cloak::Secret::from_bytes(link.secret),
        sni: link.sni.clone(),
    };
    Ok((Child(child), listen, cfg))
}

async fn cloak_connect(
    addr: &str,
    cfg: &postern_cloak::ClientConfig,
) -> anyhow::Result<postern_cloak::io::CloakStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    postern_cloak::io::client_connect(tcp, cfg, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("cloak handshake: {e}"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1_048_576.0 / d.as_secs_f64()
}

/// `postern bench relay`
pub async fn run(a: RelayArgs) -> anyhow::Result<()> {
    if let Some(addr) = &a.sink_only {
        let bound = sink(addr).await?;
        println!("sink {bound}");
        std::future::pending::<()>().await;
    }
    anyhow::ensure!(
        a.runs > 0 && a.mib > 0,
        "--runs and --mib must be at least 1"
    );
    let bytes = a.mib * 1_048_576;
    let dir = tempfile::tempdir()?;
    // The sink runs as its own process (this binary again), so its
    // sockets do not count against this process's open-file limit.
    let sink_addr = format!("127.0.0.1:{}", free_port()?);
    let _sink = Child(
        tokio::process::Command::new(std::env::current_exe()?)
            .args(["bench", "relay", "--sink-only", &sink_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the sink")?,
    );
    wait_listening(&sink_addr).await?;
    let sink: std::net::SocketAddr = sink_addr.parse()?;
    let cover = postern_relay::testing::start_cover().await;
    let mut results: Vec<(String, Option<Duration>, String)> = Vec::new();

    eprintln!(
        "Throughput: {} MiB per run, {} runs each, one stream.",
        a.mib, a.runs
    );
    // Direct, for reference: what loopback alone costs.
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        runs.push(push(TcpStream::connect(sink).await?, bytes).await?);
    }
    results.push((
        "direct (no forwarder)".into(),
        Some(median(runs)),
        String::new(),
    ));

    // socat, a plain TCP forwarder.
    let port = free_port()?;
    let socat = tokio::process::Command::new(&a.socat)
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
        .arg(format!("TCP:{sink}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    match socat {
        Ok(child) => {
            let _child = Child(child);
            let addr = format!("127.0.0.1:{port}");
            wait_listening(&addr).await?;
            let mut runs = Vec::new();
            for _ in 0..a.runs {
                runs.push(push(TcpStream::connect(&addr).await?, bytes).await?);
            }
            results.push((
                "socat (plain TCP forwarder)".into(),
                Some(median(runs)),
                String::new(),
            ));
        }
        Err(e) => results.push((
            "socat".into(),
            None,
            format!("skipped: cannot run {}: {e}", a.socat),
        )),
    }

    // shadowsocks-rust: sslocal (tunnel) -> ssserver -> sink.
    let ss_bin = |name: &str| {
        a.shadowsocks.as_ref().map(|d| {
            let in_bin = d.join("bin").join(name);
            if in_bin.exists() {
                in_bin
            } else {
                d.join(name)
            }
        })
    };
    match (ss_bin("ssserver"), ss_bin("sslocal")) {
        (Some(server), Some(local)) if server.exists() && local.exists() => {
            // Its fastest method on this CPU and the ChaCha one.
            for method in ["aes-256-gcm", "chacha20-ietf-poly1305"] {
                let (sp, lp) = (free_port()?, free_port()?);
                let ssserver = tokio::process::Command::new(&server)
                    .args(["-s", &format!("127.0.0.1:{sp}"), "-m", method])
                    .args(["-k", "bench-password"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .context("cannot start ssserver")?;
                let sslocal = tokio::process::Command::new(&local)
                    .args(["-s", &format!("127.0.0.1:{sp}"), "-m", method])
                    .args(["-k", "bench-password"])
                    .args(["-b", &format!("127.0.0.1:{lp}"), "--protocol", "tunnel"])
                    .args(["--forward-addr", &sink.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .context("cannot start sslocal")?;
                let (_s, _l) = (Child(ssserver), Child(sslocal));
                let addr = format!("127.0.0.1:{lp}");
                wait_listening(&format!("127.0.0.1:{sp}")).await?;
                wait_listening(&addr).await?;
                let mut runs = Vec::new();
                for _ in 0..a.runs {
                    runs.push(push(TcpStream::connect(&addr).await?, bytes).await?);
                }
                results.push((
                    format!("shadowsocks-rust ({method}, sslocal+ssserver)"),
                    Some(median(runs)),
                    String::new(),
                ));
            }
        }
        _ => results.push((
            "shadowsocks-rust".into(),
            None,
            "skipped: pass --shadowsocks DIR (see --help)".into(),
        )),
    }

    // The relay.
    let (relay, relay_addr, cfg) = start_relay(dir.path(), sink, cover.addr).await?;
    let relay_pid = relay.0.id().context("the relay exited")?;
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        runs.push(push(cloak_connect(&relay_addr, &cfg).await?, bytes).await?);
    }
    let relay_time = median(runs);
    results.push((
        "postern relay (cloak, client in-process)".into(),
        Some(relay_time),
        String::new(),
    ));

    // The fastest of a kind (shadowsocks runs with two methods).
    let find = |prefix: &str| {
        results
            .iter()
            .filter(|(n, t, _)| n.starts_with(prefix) && t.is_some())
            .filter_map(|(_, t, _)| *t)
            .min()
    };
    for (name, t, note) in &results {
        match t {
            Some(t) => println!("  {name:<48} {:>8.1} MiB/s", mib_per_s(bytes, *t)),
            None => println!("  {name:<48} {note}"),
        }
    }
    let ratio = |other: Option<Duration>| other.map(|o| o.as_secs_f64() / relay_time.as_secs_f64());
    if let Some(r) = ratio(find("socat")) {
        println!("  relay / socat throughput: {r:.2}× (target ≥ 0.80)");
    }
    if let Some(r) = ratio(find("shadowsocks")) {
        println!(
            "  relay / shadowsocks-rust (its fastest method) throughput: {r:.2}× (target ≥ 1.00)"
        );
    }

    // Memory per idle established connection, and many at once.
    eprintln!("Opening {} idle connections through the relay…", a.idle);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(relay_pid).context("reading the relay's memory needs Linux /proc")?;
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.idle {
        let gate = gate.clone();
        let (addr, cfg) = (relay_addr.clone(), cfg.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut s = cloak_connect(&addr, &cfg).await?;
            // A byte through to the server side, so the session is
            // established end to end.
            s.write_all(b"x").await?;
            s.flush().await?;
            anyhow::Ok(s)
        });
    }
    let mut open = Vec::with_capacity(a.idle);
    let mut failed = 0usize;
    let start = Instant::now();
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(s) => open.push(s),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("  a connection failed: {e:#}");
                }
            }
        }
        if open.len().is_multiple_of(2000) && !open.is_empty() {
            eprintln!("  {} open", open.len());
        }
    }
    let opened_in = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(relay_pid).context("the relay exited")?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / open.len().max(1) as f64;
    println!(
        "  idle connections open at once through the relay: {} ({} failed), opened in {:.1} s ({:.0}/s)",
        open.len(),
        failed,
        opened_in.as_secs_f64(),
        open.len() as f64 / opened_in.as_secs_f64()
    );
    println!(
        "  relay memory: {before} KiB before, {after} KiB with them open: {:.1} KiB per idle connection (target ≤ 32 KiB)",
        per / 1024.0
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "relay",
            "mib": a.mib,
            "runs": a.runs,
            "throughput_mib_s": results.iter().filter_map(|(n, t, _)| t.map(|t| (n.clone(), mib_per_s(bytes, t)))).collect::<std::collections::BTreeMap<_, _>>(),
            "relay_over_socat": ratio(find("socat")),
            "relay_over_shadowsocks": ratio(find("shadowsocks")),
            "idle_open": open.len(),
            "idle_failed": failed,
            "relay_rss_before_kib": before,
            "relay_rss_after_kib": after,
            "relay_bytes_per_idle_connection": per,
        })
    );
    drop(open);
    drop(relay);
    Ok(())
}
