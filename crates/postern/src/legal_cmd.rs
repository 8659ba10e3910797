//! `postern legal`: the operator's side of lawful requests, through the
//! server's operator API (`/operator/…`). Every request is signed with the
//! operator's Ed25519 key (`postern_legal::operator`); the decisions,
//! the log and the disclosure happen on the server. This only reads files,
//! signs, sends and prints.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use ed25519_dalek::SigningKey;

/// Where the operator API is and who is asking.
#[derive(clap::Args)]
pub struct OperatorArgs {
    /// The server's HTTP API, e.g. https://chat.example.org:7448.
    #[arg(long, env = "POSTERN_OPERATOR_SERVER", value_name = "URL")]
    server: String,
    /// This operator's key (from `postern legal keygen`), listed in the
    /// server's `[legal] operators`.
    #[arg(long, env = "POSTERN_OPERATOR_KEY", value_name = "FILE")]
    operator_key: PathBuf,
}

/// `postern legal …`
#[derive(clap::Subcommand)]
pub enum LegalCommand {
    /// Make an operator key (FILE, private) and print its public half for
    /// the server's `[legal] operators`.
    Keygen {
        /// Where the private key goes (created, mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Submit a request: the order's signature is verified, the policy
    /// decides, and the decision (granted or refused) goes into the
    /// transparency log. Prints the case.
    Submit {
        /// The request, transcribed as REQUEST.toml (see README).
        request: PathBuf,
        /// The order document as received (PDF).
        #[arg(long, value_name = "ORDER.pdf")]
        order: PathBuf,
        /// Its detached CMS signature (DER or PEM).
        #[arg(long, value_name = "ORDER.p7s")]
        signature: PathBuf,
        #[command(flatten)]
        op: OperatorArgs,
    },
    /// List every case.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        op: OperatorArgs,
    },
    /// Show one case.
    Show {
        /// The case id (32 hex digits).
        id: String,
        #[command(flatten)]
        op: OperatorArgs,
    },
    /// Approve a granted case; two distinct operators must.
    Approve {
        /// The case id.
        id: String,
        #[command(flatten)]
        op: OperatorArgs,
    },
    /// Write the bundle custodians review and approve
    /// (`postern custodian review|approve`).
    Bundle {
        /// The case id.
        id: String,
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        op: OperatorArgs,
    },
    /// Disclose a case from k custodians' released shares: writes the
    /// signed disclosure package (JSON) for the authority.
    Disclose {
        /// The case id.
        id: String,
        /// A custodian's released shares (`postern custodian approve
        /// --out`). Repeat for each custodian.
        #[arg(long = "share", value_name = "FILE", required = true)]
        shares: Vec<PathBuf>,
        /// Where to write the package.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        op: OperatorArgs,
    },
}

pub async fn run(cmd: LegalCommand) -> anyhow::Result<()> {
    match cmd {
        LegalCommand::Keygen { out } => keygen(&out),
        LegalCommand::Submit {
            request,
            order,
            signature,
            op,
        } => {
            let body = serde_json::json!({
                "request": std::fs::read_to_string(&request)
                    .with_context(|| format!("cannot read {}", request.display()))?,
                "order": b64(&order)?,
                "signature": b64(&signature)?,
            });
            let case = call(&op, "POST", "/operator/requests", Some(body)).await?;
            print_case(&case);
            Ok(())
        }
        LegalCommand::List { json, op } => {
            let cases = call(&op, "GET", "/operator/requests", None).await?;
            if json {
                println!("{cases}");
            } else {
                let list = cases.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("No cases.");
                }
                for c in list {
                    println!(
                        "{}  {}  {} {:<24} {:<15} approvals {}{}",
                        s(&c["id"]),
                        crate_date(c["received_at"].as_u64().unwrap_or(0)),
                        s(&c["jurisdiction"]),
                        s(&c["case_reference"]),
                        s(&c["outcome"]),
                        c["approvals"].as_array().map_or(0, Vec::len),
                        if c["disclosed_at"].is_null() {
                            ""
                        } else {
                            ", disclosed"
                        },
                    );
                }
            }
            Ok(())
        }
        LegalCommand::Show { id, op } => {
            let case = call(&op, "GET", &format!("/operator/requests/{id}"), None).await?;
            print_case(&case);
            Ok(())
        }
        LegalCommand::Approve { id, op } => {
            let case = call(
                &op,
                "POST",
                &format!("/operator/requests/{id}/approve"),
                Some(serde_json::json!({})),
            )
            .await?;
            let n = case["approvals"].as_array().map_or(0, Vec::len);
            println!(
                "Approved. {n} operator(s) approved case {}{}.",
                s(&case["id"]),
                if n >= 2 {
                    "; `postern legal bundle` writes the custodians' bundle"
                } else {
                    "; another operator must approve too"
                }
            );
            Ok(())
        }
        LegalCommand::Bundle { id, out, op } => {
            let bundle = call(&op, "GET", &format!("/operator/requests/{id}/bundle"), None).await?;
            std::fs::write(&out, bundle.to_string())
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "Bundle written to {}. Each custodian runs `postern custodian review` and \
                 `postern custodian approve` on it and sends back the released shares.",
                out.display()
            );
            Ok(())
        }
        LegalCommand::Disclose {
            id,
            shares,
            out,
            op,
        } => {
            let released = shares
                .iter()
                .map(|f| {
                    std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read {}", f.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let package = call(
                &op,
                "POST",
                &format!("/operator/requests/{id}/disclose"),
                Some(serde_json::json!({ "released": released })),
            )
            .await?;
            std::fs::write(&out, serde_json::to_string_pretty(&package)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("Signed disclosure package written to {}.", out.display());
            Ok(())
        }
    }
}

fn s(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("")
}

fn crate_date(secs: u64) -> String {
    postern_legal::date::format_datetime(secs)
}

fn print_case(c: &serde_json::Value) {
    println!("case:        {}", s(&c["id"]));
    println!(
        "received:    {}",
        crate_date(c["received_at"].as_u64().unwrap_or(0))
    );
    println!(
        "authority:   {} ({}), {}",
        s(&c["authority"]),
        s(&c["jurisdiction"]),
        s(&c["case_reference"])
    );
    println!("basis:       {}", s(&c["legal_basis"]));
    let reasons: Vec<&str> = c["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
        .unwrap_or_default();
    if reasons.is_empty() {
        println!("decision:    {}", s(&c["outcome"]));
    } else {
        println!("decision:    {} ({})", s(&c["outcome"]), reasons.join(", "));
    }
    println!(
        "accounts:    {}",
        c["accounts"].as_array().map_or(0, Vec::len)
    );
    println!("log index:   {}", c["log_index"]);
    if let Some(g) = c["gag_until"].as_u64() {
        println!("gag until:   {}", crate_date(g));
    }
    println!(
        "approvals:   {}",
        c["approvals"].as_array().map_or(0, Vec::len)
    );
    if let Some(d) = c["disclosed_at"].as_u64() {
        println!("disclosed:   {}", crate_date(d));
    }
}

fn b64(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} already exists; an operator keeps one key",
            out.display()
        );
    }
    let key = SigningKey::from_bytes(&rand::random());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    std::io::Write::write_all(
        &mut f,
        format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
    )
    .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "Operator key written to {} (keep it private).",
        out.display()
    );
    println!("Add its public key to the server's [legal] operators:");
    println!();
    println!("{}", hex::encode(key.verifying_key().as_bytes()));
    Ok(())
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the operator key {} (make one with `postern legal keygen`)",
            path.display()
        )
    })?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .with_context(|| format!("{} is not an operator key", path.display()))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Sends one signed request and returns the JSON answer, or the server's
/// error as an error.
pub(crate) async fn call(
    op: &OperatorArgs,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let key = load_key(&op.operator_key)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signed = postern_legal::operator::sign(&key, method, path, body.as_bytes(), now);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .context("cannot set up an HTTP client")?;
    let url = format!("{}{path}", op.server.trim_end_matches('/'));
    let mut req = client.request(
        reqwest::Method::from_bytes(method.as_bytes()).context("method")?,
        &url,
    );
    for (name, value) in signed.pairs() {
        req = req.header(name, value);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the operator API at {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("the server's answer broke off")?;
    let value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "error": text.trim() }));
    if !status.is_success() {
        bail!(
            "the server refused ({}): {}",
            status.as_u16(),
            value["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(value)
}
