//! `postern directory …`: the operator's offline key and signing (keygen,
//! sign, txt), and the member's import, fetch and show.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;
use postern_client::Client;
use postern_client::directory::Channel;
use postern_proto::directory::{
    Accepted, Carrier, Directory, Endpoint, MAX_DIRECTORY_LEN, SignedDirectory, txt,
};
use postern_tlog::note::{Algorithm, Signer, Verifier};
use serde::Deserialize;

#[derive(Subcommand)]
pub enum DirectoryCommand {
    /// Create a directory signing key (keep it offline): writes the private
    /// key to FILE (mode 0600) and prints the verifier key for the server
    /// config (`[directory] vkey`).
    Keygen {
        /// Where to write the private key; must not exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The key's name, e.g. chat.example.org/directory.
        #[arg(long, default_value = "postern/directory")]
        name: String,
    },
    /// Sign a directory described in TOML; prints the signed directory.
    Sign {
        /// The private key from `directory keygen`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The directory description (see the README).
        directory: PathBuf,
    },
    /// Print a signed directory's TXT records (zone-file syntax) for
    /// publishing it in DNS.
    Txt {
        /// The signed directory.
        file: PathBuf,
        /// The record name.
        #[arg(long, default_value = "_postern")]
        name: String,
    },
    /// Show a signed directory file, or (without FILE) the one this home
    /// holds; with a home, says whether its pinned key signed it.
    Show {
        /// A signed directory file.
        file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept a signed directory you were handed (a file, or - for stdin).
    Import {
        /// The signed directory.
        file: PathBuf,
    },
    /// Fetch the directory, trying each channel in turn.
    Fetch {
        /// Only this channel: http, carrier, relay, dns or mirror.
        #[arg(long, value_name = "CHANNEL")]
        via: Option<Channel>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(home: &Path, cmd: DirectoryCommand) -> anyhow::Result<()> {
    match cmd {
        DirectoryCommand::Keygen { out, name } => keygen(&out, &name),
        DirectoryCommand::Sign { key, directory } => sign(&key, &directory),
        DirectoryCommand::Txt { file, name } => txt_records(&file, &name),
        DirectoryCommand::Show { file, json } => show(home, file.as_deref(), json),
        DirectoryCommand::Import { file } => import(home, &file),
        DirectoryCommand::Fetch { via, json } => fetch(home, via, json).await,
    }
}

fn keygen(out: &Path, name: &str) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite a key", out.display());
    }
    let signer = Signer::load_or_generate(out, name, Algorithm::Ed25519)
        .with_context(|| format!("cannot create the key {}", out.display()))?;
    println!("{}", signer.verifier().vkey());
    eprintln!(
        "Wrote the private key to {} (keep it offline). The line above is the verifier key: \
         put it in the server config as [directory] vkey.",
        out.display()
    );
    Ok(())
}

/// The TOML an operator writes to describe a directory.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectoryToml {
    origin: String,
    version: u64,
    /// Absolute expiry (unix seconds)...
    expires: Option<u64>,
    /// ...or days from now.
    valid_days: Option<u64>,
    /// The server's Noise key (base64url), or take it from...
    noise_key: Option<String>,
    /// ...a server link.
    server_link: Option<String>,
    #[serde(default)]
    nodes: Vec<String>,
    #[serde(default)]
    endpoints: Vec<EndpointToml>,
    #[serde(default)]
    relays: Vec<String>,
    log_key: Option<String>,
    #[serde(default)]
    witnesses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointToml {
    carrier: String,
    host: String,
    port: u16,
    priority: u32,
    sni: Option<String>,
    path: Option<String>,
    node: Option<String>,
    cert_sha256: Option<String>,
}

fn directory_from_toml(text: &str) -> anyhow::Result<Directory> {
    let t: DirectoryToml = toml::from_str(text)?;
    let expires = match (t.expires, t.valid_days) {
        (Some(e), None) => e,
        (None, Some(days)) => postern_client::directory::now_secs() + days * 86_400,
        _ => bail!("give exactly one of expires (unix time) or valid_days"),
    };
    let noise_key = match (t.noise_key, t.server_link) {
        (Some(k), None) => URL_SAFE_NO_PAD
            .decode(k)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .context("noise_key is not 32 bytes of unpadded base64url")?,
        (None, Some(link)) => {
            let link: postern_proto::link::ServerLink =
                read_link(&link).parse().context("server_link")?;
            link.noise_key
        }
        _ => bail!("give exactly one of noise_key or server_link"),
    };
    let endpoints = t
        .endpoints
        .into_iter()
        .map(|e| -> anyhow::Result<Endpoint> {
            let carrier: Carrier = e
                .carrier
                .parse()
                .map_err(|()| anyhow::anyhow!("carrier must be tcp, tls, wss or quic"))?;
            let cert_sha256 = e
                .cert_sha256
                .map(|h| {
                    let mut pin = [0u8; 32];
                    hex::decode_to_slice(h.trim(), &mut pin)
                        .map(|()| pin)
                        .context("cert_sha256 is not 64 hex digits")
                })
                .transpose()?;
            Ok(Endpoint {
                carrier,
                host: e.host.trim_start_matches('[').trim_end_matches(']').into(),
                port: e.port,
                priority: e.priority,
                sni: e.sni,
                path: e.path,
                node: e.node,
                cert_sha256,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let d = Directory {
        origin: t.origin,
        version: t.version,
        expires,
        noise_key,
        nodes: t.nodes,
        endpoints,
        relays: t.relays,
        log_key: t.log_key,
        witnesses: t.witnesses,
    };
    d.check()?;
    Ok(d)
}

/// A link, or a file holding one.
fn read_link(text: &str) -> String {
    if text.starts_with("postern://") {
        return text.to_owned();
    }
    std::fs::read_to_string(text).unwrap_or_else(|_| text.to_owned())
}

fn sign(key: &Path, directory: &Path) -> anyhow::Result<()> {
    let skey = zeroize::Zeroizing::new(
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?,
    );
    let signer = Signer::from_skey(skey.trim())
        .map_err(|e| anyhow::anyhow!("{} is not a directory key: {e}", key.display()))?;
    let text = std::fs::read_to_string(directory)
        .with_context(|| format!("cannot read {}", directory.display()))?;
    let d = directory_from_toml(&text).with_context(|| format!("in {}", directory.display()))?;
    let signed = d.sign(&signer)?;
    std::io::stdout().write_all(signed.bytes())?;
    eprintln!(
        "Signed version {} (expires at unix time {}) with {}.",
        d.version,
        d.expires,
        signer.verifier().vkey()
    );
    Ok(())
}

fn read_signed(file: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), MAX_DIRECTORY_LEN as u64 + 1),
            &mut b,
        )?;
        b
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    Ok(bytes)
}

fn txt_records(file: &Path, name: &str) -> anyhow::Result<()> {
    let bytes = read_signed(file)?;
    SignedDirectory::parse_unverified(&bytes)?;
    for record in txt::encode(&bytes) {
        let strings: Vec<String> = record.iter().map(|s| format!("\"{s}\"")).collect();
        println!("{name} 300 IN TXT {}", strings.join(" "));
    }
    Ok(())
}

fn describe(d: &Directory) -> serde_json::Value {
    serde_json::json!({
        "origin": d.origin,
        "version": d.version,
        "expires": d.expires,
        "noise_key": URL_SAFE_NO_PAD.encode(d.noise_key),
        "nodes": d.nodes,
        "endpoints": d.endpoints_by_priority().iter().map(|e| serde_json::json!({
            "carrier": e.carrier.name(),
            "addr": e.addr(),
            "priority": e.priority,
            "sni": e.sni,
            "path": e.path,
            "node": e.node,
            "cert_sha256": e.cert_sha256.map(hex::encode),
        })).collect::<Vec<_>>(),
        "relays": d.relays,
        "log_key": d.log_key,
        "witnesses": d.witnesses,
    })
}

fn show(home: &Path, file: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let client = Client::open(home).ok();
    let pinned: Option<Verifier> = client.as_ref().and_then(|c| c.directory_key().ok());
    let now = postern_client::directory::now_secs();
    let (directory, signers, verdict) = match file {
        Some(file) => {
            let bytes = read_signed(file)?;
            let (note, d) = SignedDirectory::parse_unverified(&bytes)?;
            let signers: Vec<String> = note
                .signatures()
                .iter()
                .map(|s| format!("{}+{:08x}", s.name, s.key_id))
                .collect();
            let verdict = match &pinned {
                None => "not checked (no home with a pinned directory key)".to_owned(),
                Some(key) => match SignedDirectory::verify(&bytes, key) {
                    Ok(_) if d.expires <= now => "signed by the pinned key, but EXPIRED".into(),
                    Ok(_) => "signed by the pinned key".into(),
                    Err(e) => format!("REFUSED: {e}"),
                },
            };
            (d, signers, verdict)
        }
        None => {
            let client = client
                .context("no directory file given and no home set up (give FILE or --home DIR)")?;
            let held = client
                .cached_directory()?
                .context("this home holds no directory yet; run `postern directory fetch`")?;
            let mut verdict = if held.directory().expires <= now {
                "held, signed by the pinned key, but EXPIRED: run `postern directory fetch`"
            } else {
                "held, signed by the pinned key"
            }
            .to_owned();
            if let Some(from) = client.directory_source()? {
                verdict.push_str(&format!("; from {from}"));
            }
            (held.directory().clone(), Vec::new(), verdict)
        }
    };
    if json {
        let mut v = describe(&directory);
        v["signed_by"] = serde_json::json!(signers);
        v["verdict"] = serde_json::json!(verdict);
        println!("{v}");
        return Ok(());
    }
    println!("origin     {}", directory.origin);
    println!("version    {}", directory.version);
    let left = directory.expires.saturating_sub(now);
    println!(
        "expires    {} ({})",
        directory.expires,
        if left == 0 {
            "expired".to_owned()
        } else {
            format!("in {} h", left / 3600)
        }
    );
    println!("noise key  {}", URL_SAFE_NO_PAD.encode(directory.noise_key));
    for e in directory.endpoints_by_priority() {
        let mut extra = String::new();
        for (k, v) in [
            ("sni", e.sni.clone()),
            ("path", e.path.clone()),
            ("node", e.node.clone()),
            ("pin", e.cert_sha256.map(hex::encode)),
        ] {
            if let Some(v) = v {
                extra.push_str(&format!(" {k}={v}"));
            }
        }
        println!(
            "endpoint   {:<4} {} priority {}{extra}",
            e.carrier,
            e.addr(),
            e.priority
        );
    }
    for r in &directory.relays {
        println!("relay      {r}");
    }
    if let Some(k) = &directory.log_key {
        println!("log key    {k}");
    }
    for w in &directory.witnesses {
        println!("witness    {w}");
    }
    for s in &signers {
        println!("signed by  {s}");
    }
    println!("verdict    {verdict}");
    Ok(())
}

fn import(home: &Path, file: &Path) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let bytes = read_signed(file)?;
    match client.import_directory(&bytes)? {
        Accepted::Newer(d) => eprintln!(
            "Imported directory version {} (expires at unix time {}).",
            d.directory().version,
            d.directory().expires
        ),
        Accepted::Same => eprintln!("This home already holds that directory."),
    }
    Ok(())
}

async fn fetch(home: &Path, via: Option<Channel>, json: bool) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let report = client.fetch_directory(via).await;
    if json {
        let attempts: Vec<_> = report
            .attempts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "channel": a.channel.name(),
                    "source": a.source,
                    "error": a.error,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "ok": report.success().is_some(),
                "channel": report.success().map(|a| a.channel.name()),
                "version": report.directory.as_ref().map(|d| d.directory().version),
                "updated": report.updated,
                "attempts": attempts,
            })
        );
    } else {
        for a in &report.attempts {
            match &a.error {
                Some(e) => eprintln!("{:<8} {}: failed: {e}", a.channel, a.source),
                None => eprintln!("{:<8} {}: ok", a.channel, a.source),
            }
        }
    }
    match (report.success(), &report.directory) {
        (Some(a), Some(d)) => {
            if !json {
                println!(
                    "Directory version {} via {} ({}).",
                    d.directory().version,
                    a.channel,
                    if report.updated {
                        "updated"
                    } else {
                        "unchanged"
                    }
                );
            }
            Ok(())
        }
        _ => bail!("no channel delivered a directory this client accepts"),
    }
}
