//! `postern witness`: a C2SP tlog-witness for the logs given on the
//! command line. The witness logic is in postern_tlog::witness; this only
//! loads the key, opens the state directory and serves HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use postern_tlog::note::{Algorithm, Signer, Verifier};
use postern_tlog::witness::{FileStore, Witness};

/// Flags of `postern witness`.
#[derive(clap::Args)]
pub struct WitnessArgs {
    /// Address to serve POST /add-checkpoint on.
    #[arg(long, default_value = "127.0.0.1:7449", value_name = "ADDR")]
    listen: SocketAddr,
    /// Where the witness key (witness.key, created on first start) and the
    /// latest cosigned checkpoint of each log live.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// A log to witness, by its verifier key (NAME+KEYID+KEY; the name is
    /// the log's origin). Repeat for several logs.
    #[arg(long = "log", value_name = "VKEY", required = true)]
    logs: Vec<String>,
    /// The witness's name in its cosignatures, used when the key is
    /// first generated.
    #[arg(long, default_value = "postern-witness", value_name = "NAME")]
    name: String,
}

pub async fn run(args: WitnessArgs) -> anyhow::Result<()> {
    let logs = args
        .logs
        .iter()
        .map(|v| {
            Verifier::from_vkey(v).with_context(|| format!("--log {v:?} is not a verifier key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let key_path = args.data_dir.join("witness.key");
    let signer = Signer::load_or_generate(&key_path, &args.name, Algorithm::CosignatureV1)?;
    let vkey = signer.verifier().vkey();
    std::fs::write(args.data_dir.join("witness.vkey"), format!("{vkey}\n")).with_context(|| {
        format!(
            "cannot write {}",
            args.data_dir.join("witness.vkey").display()
        )
    })?;
    let store = FileStore::open(&args.data_dir.join("logs"))
        .with_context(|| format!("cannot open {}", args.data_dir.join("logs").display()))?;
    let router = postern_tlog::http::witness_router(Witness::new(signer, logs.clone(), store));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("Postern witness {} is running.", args.name);
    println!("  submissions: http://{addr}/add-checkpoint");
    println!("  data dir:    {}", args.data_dir.display());
    for l in &logs {
        println!("  witnessing:  {}", l.name());
    }
    println!();
    println!(
        "Witness key (also in {}):",
        args.data_dir.join("witness.vkey").display()
    );
    println!("  {vkey}");
    println!("Stop with Ctrl-C.");
    axum::serve(listener, router)
        .with_graceful_shutdown(crate::serve::shutdown_signal())
        .await
        .context("the witness's HTTP server failed")
}
