//! `postern`: one binary for the server, the member's command line, the demo,
//! the benchmarks and the censorship simulator. It only parses arguments and
//! wires library crates together; the logic lives in postern-server,
//! postern-client, postern-tlog, postern-legal and postern-sim.
#![forbid(unsafe_code)]

mod bench;
mod chat_cmd;
mod client_cmd;
mod custodian;
mod demo;
mod directory_cmd;
mod legal_cmd;
mod relay_cmd;
mod serve;
mod sim;
mod transparency;
mod witness;

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
/// and `recv`. Every conversation is end-to-end encrypted with MLS.
/// `postern demo` shows a conversation in one command.
#[derive(Parser)]
#[command(name = "postern", version, propagate_version = true)]
struct Cli {
    /// The member's home directory: device keys, server link and message
    /// store. Default: $XDG_DATA_HOME/postern-client.
    #[arg(long, global = true, env = "POSTERN_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    /// Log filter (error, warn, info, debug, trace, or a RUST_LOG-style
    /// directive). Logs go to stderr. Give it before the command
    /// (`postern --log debug recv`); `serve` also takes it after.
    /// Not global, because `witness` and `transparency` use `--log` to
    /// name a transparency log.
    #[arg(long, env = "POSTERN_LOG", value_name = "FILTER")]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
        /// An invitation code from a member (`postern invite create`): the
        /// new account starts trusted and shares the inviter's relays.
        #[arg(long)]
        invite: Option<String>,
    },
    /// Send a text message, end-to-end encrypted; exits 0 once the server
    /// has durably stored it for every device in the conversation.
    ///
    /// The first message to a contact starts a direct chat (an MLS group of
    /// both members' devices).
    Send {
        /// A contact (phone number, @username or account id), or a group:
        /// #NAME or #ID (32 hex digits, from `group list`).
        to: String,
        /// The message.
        text: String,
        /// Answer this message (its id, or the 8 hex digits `recv` and
        /// `history` show after each message).
        #[arg(long, value_name = "ID")]
        reply_to: Option<String>,
    },
    /// Replace the text of one of your messages.
    Edit {
        /// The conversation (as for `send`).
        to: String,
        /// The message's id (or its last 8 hex digits).
        id: String,
        /// The new text.
        text: String,
    },
    /// Retract one of your messages.
    Delete {
        /// The conversation (as for `send`).
        to: String,
        /// The message's id (or its last 8 hex digits).
        id: String,
    },
    /// React to a message with an emoji.
    React {
        /// The conversation (as for `send`).
        to: String,
        /// The message's id (or its last 8 hex digits).
        id: String,
        /// The reaction, like 👍.
        emoji: String,
        /// Take the reaction back.
        #[arg(long)]
        remove: bool,
    },
    /// Show a conversation's history from this device's home (no network).
    History {
        /// The conversation (as for `send`).
        to: String,
        /// How many entries, newest last.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object a line, as `recv --json`.
        #[arg(long)]
        json: bool,
    },
    /// Print received messages and acknowledge them.
    ///
    /// Each line reads `HH:MM:SS [CONVERSATION] SENDER: TEXT`, the time being
    /// the sender's clock in UTC; CONVERSATION is #group or the contact of a
    /// direct chat; SENDER is @username, the phone number you wrote to, or
    /// the account id. Membership changes and warnings (a contact's safety
    /// number changed) read `HH:MM:SS [CONVERSATION] * WHAT`. Messages are
    /// decrypted and stored in the home before they are acknowledged.
    Recv {
        /// Exit after SECS seconds without a new message. Without it,
        /// stream until interrupted (reconnecting as needed).
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        /// One JSON object a line: conversation, group_id, from, system,
        /// text, sent_at, received_at, seq.
        #[arg(long)]
        json: bool,
    },
    /// Race the routes to the server now and show the outcome: the state,
    /// the route in use, and why each other route failed.
    Status {
        /// Print JSON.
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
    /// Create and change groups.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Link, list and remove this account's devices.
    Device {
        #[command(subcommand)]
        action: DeviceAction,
    },
    /// Run a relay in front of a website you control (volunteers), or
    /// manage the relays you use (members).
    ///
    /// Volunteers: `postern relay --listen 0.0.0.0:443 --cover 127.0.0.1:8443
    /// --sni www.example.org --server LINK` prints a relay link to give to
    /// members; probers and strangers are passed to the cover site untouched.
    /// Members: `postern relay add LINK`, `list`, `test`, `remove`, and
    /// `fetch` for the relays the server assigns you.
    #[command(args_conflicts_with_subcommands = true)]
    Relay {
        #[command(subcommand)]
        action: Option<RelayAction>,
        #[command(flatten)]
        run: relay_cmd::RelayRunArgs,
    },
    /// The signed directory: sign one (operator, offline key), or import,
    /// fetch and show it (member).
    Directory {
        #[command(subcommand)]
        what: directory_cmd::DirectoryCommand,
    },
    /// Show whether your data was disclosed to an authority (lawful
    /// requests whose gag has lapsed): the date and what.
    Notices {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Invite someone: they register with `--invite CODE`.
    Invite {
        #[command(subcommand)]
        action: InviteAction,
    },
    /// Show the safety number you share with a contact.
    ///
    /// Compare it with the contact in person or on a call: if the numbers
    /// match, nobody (not even the server) sits between your devices and
    /// theirs. It changes when either of you adds, removes or re-keys a
    /// device.
    Verify {
        /// Phone number, @username or account id.
        contact: String,
        /// Record that you compared it and it matched; later changes are
        /// then flagged.
        #[arg(long)]
        confirm: bool,
    },
    /// Start a server and two members in a temporary directory and show a
    /// short conversation.
    Demo,
    /// Run a transparency-log witness: verify consistency, cosign, and
    /// remember each log's latest size.
    Witness(witness::WitnessArgs),
    /// A custodian's commands: make a key, review and approve disclosure
    /// bundles.
    Custodian {
        #[command(subcommand)]
        what: custodian::CustodianCommand,
    },
    /// The operator's lawful-request commands (operator API): submit,
    /// list, show, approve, bundle for custodians, disclose.
    Legal {
        #[command(subcommand)]
        what: legal_cmd::LegalCommand,
    },
    /// Verify or monitor a transparency log; write and check offline proofs.
    Transparency {
        #[command(subcommand)]
        what: transparency::TransparencyCommand,
    },
    /// Measure the server.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Simulate censors against relay distributors: postern sim SCENARIO.toml
    Sim(sim::SimArgs),
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum RelayAction {
    /// Add a relay from its link (postern://relay?…, or a file holding it).
    Add {
        /// The relay link a volunteer gave you.
        link: String,
    },
    /// List your relays and how they fared.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Try your relays (or one) all the way to the server.
    Test {
        /// A relay's HOST:PORT or name; default: all.
        which: Option<String>,
    },
    /// Remove a relay (by HOST:PORT, name or link).
    Remove {
        /// The relay's HOST:PORT, name or link.
        which: String,
    },
    /// Check a relay's setup (volunteers): the cover answers, SNI and DNS
    /// agree, the port is reachable, the server accepts; says what to fix.
    Doctor(relay_cmd::RelayRunArgs),
    /// Operators: hand out a relay that registered with a key not (yet)
    /// in `relay_operators`.
    Approve {
        /// The relay's HOST:PORT, as `relay status` shows it.
        host: String,
        #[command(flatten)]
        op: legal_cmd::OperatorArgs,
    },
    /// Operators: retire a registered relay; its members get others, and
    /// the relay sends everything to its cover from its next report on.
    Retire {
        /// The relay's HOST:PORT.
        host: String,
        #[command(flatten)]
        op: legal_cmd::OperatorArgs,
    },
    /// Operators: every relay, configured and registered, with its state,
    /// load and where it is blocked (JSON).
    Status {
        #[command(flatten)]
        op: legal_cmd::OperatorArgs,
    },
    /// Print the relay links assigned to you, one a line, and keep them
    /// with your relays (new members get one; more come with trust).
    Fetch {
        /// Print JSON (links, level, invitations left).
        #[arg(long)]
        json: bool,
    },
    /// Report that you cannot reach a relay you were given; prints your
    /// relays afterwards, with a replacement if the block is confirmed.
    Report {
        /// The relay link, as `relay fetch` printed it.
        link: String,
    },
}

#[derive(Subcommand)]
enum InviteAction {
    /// Create a one-time invitation code (members earn a few as their
    /// trust level rises).
    Create,
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

#[derive(Subcommand)]
enum GroupAction {
    /// Create a group with these members (all their devices).
    Create {
        /// The group's name (without spaces; shown as #NAME).
        name: String,
        /// Phone numbers, @usernames or account ids.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Add members to a group.
    Add {
        /// #NAME or #ID.
        group: String,
        /// Phone numbers, @usernames or account ids.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove members (all their devices) from a group.
    Remove {
        /// #NAME or #ID.
        group: String,
        /// Phone numbers, @usernames or account ids.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Leave a group.
    Leave {
        /// #NAME or #ID.
        group: String,
    },
    /// List conversations (groups and direct chats) and their members.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceAction {
    /// Print a one-time link that adds a new device to this account.
    Link {
        /// Also draw the link as a QR code in the terminal.
        #[arg(long)]
        qr: bool,
    },
    /// Set up this (new) home as another device of the account that made
    /// LINK; it joins all of the account's conversations.
    Add {
        /// The postern://device?… link from `device link`.
        link: String,
        /// A label for this device.
        #[arg(long, default_value = "cli")]
        device_name: String,
    },
    /// List the account's devices.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove another device of this account: it can no longer connect and
    /// cannot read anything sent afterwards.
    Remove {
        /// Its number, from `device list`.
        id: u32,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) | Command::Witness(_) => "info",
        _ => "warn",
    };
    let log = match &cli.command {
        Command::Serve(args) => args.log.clone().or(cli.log.clone()),
        _ => cli.log.clone(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(log.as_deref().unwrap_or(default_log))
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
            invite,
        } => {
            let who = client_cmd::NewAccount {
                phone: &phone,
                username: username.as_deref(),
                device_name: &device_name,
                invite: invite.as_deref(),
            };
            client_cmd::register(&home, who, code).await
        }
        Command::Send { to, text, reply_to } => {
            client_cmd::send(&home, &to, client_cmd::Outgoing::Text { text, reply_to }).await
        }
        Command::Edit { to, id, text } => {
            client_cmd::send(&home, &to, client_cmd::Outgoing::Edit { id, text }).await
        }
        Command::Delete { to, id } => {
            client_cmd::send(&home, &to, client_cmd::Outgoing::Delete { id }).await
        }
        Command::React {
            to,
            id,
            emoji,
            remove,
        } => {
            let what = client_cmd::Outgoing::React { id, emoji, remove };
            client_cmd::send(&home, &to, what).await
        }
        Command::History { to, limit, json } => client_cmd::history(&home, &to, limit, json).await,
        Command::Recv { wait, json } => client_cmd::recv(&home, wait, json).await,
        Command::Whoami { json } => client_cmd::whoami(&home, json).await,
        Command::Status { json } => client_cmd::status(&home, json).await,
        Command::Username { action } => match action {
            UsernameAction::Set { name } => client_cmd::set_username(&home, &name).await,
            UsernameAction::Clear => client_cmd::set_username(&home, "").await,
        },
        Command::Group { action } => match action {
            GroupAction::Create { name, members } => {
                chat_cmd::group_create(&home, &name, &members).await
            }
            GroupAction::Add { group, members } => {
                chat_cmd::group_add(&home, &group, &members).await
            }
            GroupAction::Remove { group, members } => {
                chat_cmd::group_remove(&home, &group, &members).await
            }
            GroupAction::Leave { group } => chat_cmd::group_leave(&home, &group).await,
            GroupAction::List { json } => chat_cmd::group_list(&home, json).await,
        },
        Command::Device { action } => match action {
            DeviceAction::Link { qr } => chat_cmd::device_link(&home, qr).await,
            DeviceAction::Add { link, device_name } => {
                chat_cmd::device_add(&home, &link, &device_name).await
            }
            DeviceAction::List { json } => chat_cmd::device_list(&home, json).await,
            DeviceAction::Remove { id } => chat_cmd::device_remove(&home, id).await,
        },
        Command::Relay { action, run } => match action {
            None => relay_cmd::run(run).await,
            Some(RelayAction::Add { link }) => relay_cmd::add(&home, &link),
            Some(RelayAction::List { json }) => relay_cmd::list(&home, json),
            Some(RelayAction::Test { which }) => relay_cmd::test(&home, which.as_deref()).await,
            Some(RelayAction::Remove { which }) => relay_cmd::remove(&home, &which),
            Some(RelayAction::Doctor(args)) => relay_cmd::doctor(args).await,
            Some(RelayAction::Approve { host, op }) => {
                relay_cmd::operate(&op, &host, "approve").await
            }
            Some(RelayAction::Retire { host, op }) => {
                relay_cmd::operate(&op, &host, "retire").await
            }
            Some(RelayAction::Status { op }) => relay_cmd::status(&op).await,
            Some(RelayAction::Fetch { json }) => client_cmd::relay_fetch(&home, json).await,
            Some(RelayAction::Report { link }) => client_cmd::relay_report(&home, &link).await,
        },
        Command::Directory { what } => directory_cmd::run(&home, what).await,
        Command::Notices { json } => client_cmd::notices(&home, json).await,
        Command::Invite { action } => match action {
            InviteAction::Create => client_cmd::invite_create(&home).await,
        },
        Command::Verify { contact, confirm } => chat_cmd::verify(&home, &contact, confirm).await,
        Command::Demo => demo::run().await,
        Command::Witness(args) => witness::run(args).await,
        Command::Custodian { what } => custodian::run(what),
        Command::Legal { what } => legal_cmd::run(what).await,
        Command::Transparency { what } => transparency::run(what).await,
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
