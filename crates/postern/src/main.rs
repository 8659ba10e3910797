//! `postern`: one binary for the server, the member's command line, the demo,
//! the benchmarks and the censorship simulator. It only parses arguments and
//! wires library crates together; the logic lives in postern-server,
//! postern-client and postern-sim.
#![forbid(unsafe_code)]

mod bench;
mod client_cmd;
mod demo;
mod serve;
mod sim;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the server allocates per frame
/// on many threads, where glibc malloc showed up at ~12% of server CPU in
/// the delivery benchmark's profile (see BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Postern: private messaging that keeps getting through.
///
/// Run a server with `postern serve`; as a member, bind a home directory to
/// a server with `postern --home DIR setup LINK`, then `register`, `send`
/// and `recv`. `postern demo` shows a conversation in one command.
#[derive(Parser)]
#[command(name = "postern", version, propagate_version = true)]
struct Cli {
    /// The member's home directory: device keys, server link and message
    /// store. Default: $XDG_DATA_HOME/postern-client.
    #[arg(long, global = true, env = "POSTERN_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, trace, or a RUST_LOG-style
    /// directive). Logs go to stderr.
    #[arg(long, global = true, env = "POSTERN_LOG", value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server (embedded SQLite, no other services needed).
    Serve(serve::ServeArgs),
    /// Create a client home bound to a server link.
    Setup {
        /// The server link (postern://server?…) or a file holding it
        /// (the server writes DATA_DIR/server-link.txt).
        link: String,
    },
    /// Ask the server to text a registration code to PHONE.
    RequestCode {
        /// Phone number in international form, like +14155552671.
        phone: String,
    },
    /// Register a new account with this device as its first device.
    ///
    /// Without --code it requests a code and reads it from standard input.
    Register {
        /// Phone number in international form, like +14155552671.
        phone: String,
        /// A code requested earlier with `request-code`.
        #[arg(long)]
        code: Option<String>,
        /// Also claim this username.
        #[arg(long)]
        username: Option<String>,
        /// A label for this device.
        #[arg(long, default_value = "cli")]
        device_name: String,
    },
    /// Send a text message; exits 0 once the server has durably stored it.
    Send {
        /// A phone number, @username, or account id.
        to: String,
        /// The message.
        text: String,
    },
    /// Print received messages and acknowledge them.
    ///
    /// Each line reads `HH:MM:SS SENDER: TEXT`, the time being the sender's
    /// clock in UTC; SENDER is @username, the phone number you wrote to, or
    /// the account id. Messages are stored in the home before they are
    /// acknowledged.
    Recv {
        /// Exit after SECS seconds without a new message. Without it,
        /// stream until interrupted (reconnecting as needed).
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        /// One JSON object a line: from, text, sent_at, received_at, seq.
        #[arg(long)]
        json: bool,
    },
    /// Show this device's account.
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage this account's username.
    Username {
        #[command(subcommand)]
        action: UsernameAction,
    },
    /// Start a server and two members in a temporary directory and show a
    /// short conversation.
    Demo,
    /// Measure the server.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Simulate censors against relay distributors: postern sim SCENARIO.toml
    Sim(sim::SimArgs),
}

#[derive(Subcommand)]
enum UsernameAction {
    /// Claim a username (3-32 of a-z, 0-9, _; starting with a letter).
    Set {
        /// The name, with or without '@'.
        name: String,
    },
    /// Give up the username.
    Clear,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(default_log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = cli.home.unwrap_or_else(default_home);
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Setup { link } => client_cmd::setup(&home, &link),
        Command::RequestCode { phone } => client_cmd::request_code(&home, &phone).await,
        Command::Register {
            phone,
            code,
            username,
            device_name,
        } => client_cmd::register(&home, &phone, code, username.as_deref(), &device_name).await,
        Command::Send { to, text } => client_cmd::send(&home, &to, &text).await,
        Command::Recv { wait, json } => client_cmd::recv(&home, wait, json).await,
        Command::Whoami { json } => client_cmd::whoami(&home, json).await,
        Command::Username { action } => match action {
            UsernameAction::Set { name } => client_cmd::set_username(&home, &name).await,
            UsernameAction::Clear => client_cmd::set_username(&home, "").await,
        },
        Command::Demo => demo::run().await,
        Command::Bench { what } => bench::run(what).await,
        Command::Sim(args) => sim::run(args),
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose text
/// the message already holds (many errors name their cause in their own
/// message and also return it as their source).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn default_home() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("postern-client"))
        .unwrap_or_else(|| PathBuf::from("postern-client"))
}
