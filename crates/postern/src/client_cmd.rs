//! The member's commands: setup, request-code, register, send, recv,
//! whoami, username. Each opens the home, connects, does one thing, and
//! prints a result a script can use. (Groups, devices and safety numbers
//! are in chat_cmd.rs.)

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use postern_client::{Client, ClientError, ConnectionState, Event, ReceivedMessage, Target};
use postern_proto::link::ServerLink;

/// How often `send` retries (same message id) after a broken connection.
const SEND_ATTEMPTS: u32 = 5;

pub fn setup(home: &Path, link: &str) -> anyhow::Result<()> {
    let text = if link.trim_start().starts_with("postern://") {
        link.to_owned()
    } else {
        std::fs::read_to_string(link)
            .with_context(|| format!("{link:?} is neither a postern:// link nor a readable file"))?
    };
    let link: ServerLink = text
        .trim()
        .parse()
        .context("this is not a valid server link")?;
    Client::setup(home, &link)?;
    println!(
        "Home {} is set up for {}.",
        home.display(),
        link.endpoints().join(", ")
    );
    println!("Next: postern --home {} register PHONE", home.display());
    Ok(())
}

pub(crate) async fn connect(home: &Path) -> anyhow::Result<(Client, postern_client::Connection)> {
    let client = Client::open(home)?;
    let conn = client.connect().await.with_context(|| {
        format!(
            "cannot reach the server at {}",
            client.link().endpoints().join(", ")
        )
    })?;
    Ok((client, conn))
}

pub async fn request_code(home: &Path, phone: &str) -> anyhow::Result<()> {
    let (_, conn) = connect(home).await?;
    let sent = conn.request_code(phone).await?;
    println!(
        "A code was sent to {}; it is valid for {} minutes.",
        sent.phone,
        sent.expires_in_ms / 60_000
    );
    Ok(())
}

/// Who `register` creates.
pub struct NewAccount<'a> {
    pub phone: &'a str,
    pub username: Option<&'a str>,
    pub device_name: &'a str,
    pub invite: Option<&'a str>,
}

pub async fn register(
    home: &Path,
    who: NewAccount<'_>,
    code: Option<String>,
) -> anyhow::Result<()> {
    let NewAccount {
        phone,
        username,
        device_name,
        invite,
    } = who;
    let (client, mut conn) = connect(home).await?;
    if client.device().is_some() || conn.device().is_some() {
        bail!("this home is already registered; use another --home for another account");
    }
    let code = match code {
        Some(c) => c,
        None => {
            let sent = conn.request_code(phone).await?;
            eprint!("Enter the code sent to {}: ", sent.phone);
            std::io::stderr().flush().ok();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the code from standard input")?;
            line.trim().to_owned()
        }
    };
    let addr = conn
        .register_with_invite(phone, &code, username, device_name, invite)
        .await?;
    println!(
        "Registered: account {} device {}.",
        addr.account, addr.device
    );
    Ok(())
}

pub async fn status(home: &Path, json: bool) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let started = std::time::Instant::now();
    let outcome = client.connect_racing().await;
    let took_ms = started.elapsed().as_millis();
    let (state, route, error) = match &outcome {
        Ok((conn, _)) => ("ready", Some(conn.route().to_owned()), None),
        Err(e @ ClientError::NoRoute(_)) => ("waiting-for-network", None, Some(e.to_string())),
        Err(e) if e.is_transient() => ("connecting", None, Some(e.to_string())),
        Err(e) => return Err(anyhow::anyhow!("{e}")),
    };
    let routes = client.routes()?;
    let candidates = client.candidates();
    let now = postern_client::connectivity::now_ms();
    let rows: Vec<serde_json::Value> = candidates
        .iter()
        .map(|c| {
            let name = c.route();
            let h = routes.iter().find(|r| r.route == name);
            let last_failure = h.and_then(|h| {
                h.last_failure.as_ref().map(|f| match f.as_str() {
                    "freeze" => format!("freeze after {} bytes", h.freeze_after),
                    other => other.to_owned(),
                })
            });
            serde_json::json!({
                "route": name,
                "in_use": route.as_deref() == Some(name.as_str()),
                "failures": h.map(|h| h.failures).unwrap_or(0),
                "last_failure": last_failure,
                "last_error": h.and_then(|h| h.last_error.clone()),
                "last_ok_ms": h.and_then(|h| h.last_ok_ms),
                "retry_in_ms": h.map(|h| (h.next_try_ms - now).max(0)).unwrap_or(0),
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "state": state,
                "route": route,
                "error": error,
                "race_ms": took_ms,
                "routes": rows,
            })
        );
    } else {
        match &route {
            Some(r) => println!("State: {state}, over {r} (found in {took_ms} ms)."),
            None => println!("State: {state}."),
        }
        if let Some(e) = &error {
            println!("  {e}");
        }
        println!("Routes:");
        for row in &rows {
            let name = row["route"].as_str().unwrap_or_default();
            let mark = if row["in_use"] == true { "*" } else { " " };
            let why = match (row["failures"].as_u64(), row["last_failure"].as_str()) {
                (Some(0), _) | (_, None) => "ok".to_owned(),
                (Some(n), Some(f)) => format!(
                    "failed {n}× (last: {f}: {}), next try in {:.0} s",
                    row["last_error"].as_str().unwrap_or(""),
                    row["retry_in_ms"].as_i64().unwrap_or(0) as f64 / 1000.0
                ),
                (None, Some(f)) => f.to_owned(),
            };
            println!(" {mark} {name:<40} {why}");
        }
    }
    Ok(())
}

pub async fn relay_fetch(home: &Path, json: bool) -> anyhow::Result<()> {
    let (client, conn) = connect(home).await?;
    let held = conn.fetch_relays().await?;
    client.set_assigned_relays(&held.links)?;
    print_relays(&held, json);
    Ok(())
}

pub async fn relay_report(home: &Path, link: &str) -> anyhow::Result<()> {
    let (client, conn) = connect(home).await?;
    let held = conn.report_blocked(link).await?;
    client.set_assigned_relays(&held.links)?;
    eprintln!("Reported. Your relays now:");
    print_relays(&held, false);
    Ok(())
}

fn print_relays(held: &postern_client::RelayAssignment, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "links": held.links,
                "level": held.level,
                "invitations": held.invitations,
                "unserved": held.unserved.as_ref().map(|(why, _)| why),
            })
        );
        return;
    }
    if held.links.is_empty() {
        match &held.unserved {
            Some((_, text)) if !text.is_empty() => eprintln!("No relay for you: {text}."),
            _ => eprintln!("No relay for you right now (none free, or a limit); try again later."),
        }
    }
    for link in &held.links {
        println!("{link}");
    }
}

pub async fn invite_create(home: &Path) -> anyhow::Result<()> {
    let (_client, conn) = connect(home).await?;
    let code = conn.create_invite().await?;
    println!("{code}");
    eprintln!("Give this code to one person: postern register PHONE --invite {code}");
    Ok(())
}

/// `postern notices`: lawful disclosures of this account's data that the
/// member may now be told of.
/// A disclosure notice as people read it.
fn notice_text(n: &postern_proto::pb::DisclosureNotice) -> String {
    let when =
        postern_legal::date::format_date(u64::try_from(n.disclosed_at_ms / 1000).unwrap_or(0));
    let what: Vec<String> = n.categories.iter().map(|c| c.replace('_', " ")).collect();
    format!(
        "Your data was disclosed on {when}: {} (a request from {}, transparency log entry {}).",
        what.join(", "),
        n.jurisdiction,
        n.log_index
    )
}

/// Tells the member, on standard error and once per notice (remembered in
/// the home), of disclosures the server may now tell of; `recv` calls it,
/// so nobody has to think of running `postern notices`. Best effort: a
/// failure to ask is not the receiver's problem.
async fn announce_new_notices(client: &Client, conn: &postern_client::Connection) {
    let Ok(list) = conn.notices().await else {
        return;
    };
    let seen = client
        .with_home(|h| h.get_text("notices_seen"))
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut seen: std::collections::BTreeSet<u64> =
        seen.split(',').filter_map(|x| x.parse().ok()).collect();
    let mut changed = false;
    for n in &list {
        if seen.insert(n.log_index) {
            eprintln!("{}", notice_text(n));
            changed = true;
        }
    }
    if changed {
        let text: Vec<String> = seen.iter().map(u64::to_string).collect();
        let _ = client.with_home(|h| h.set("notices_seen", text.join(",").as_bytes()));
    }
}

pub async fn notices(home: &Path, json: bool) -> anyhow::Result<()> {
    let (_client, conn) = connect(home).await?;
    let list = conn.notices().await?;
    for n in &list {
        let when =
            postern_legal::date::format_date(u64::try_from(n.disclosed_at_ms / 1000).unwrap_or(0));
        if json {
            let v = serde_json::json!({
                "disclosed_at": when,
                "categories": n.categories,
                "jurisdiction": n.jurisdiction,
                "log_index": n.log_index,
            });
            println!("{v}");
        } else {
            println!("{}", notice_text(n));
        }
    }
    if list.is_empty() && !json {
        println!("No disclosures of your data that the server may tell you of.");
    }
    Ok(())
}

/// What `send`, `edit`, `delete` and `react` send.
pub enum Outgoing {
    /// A text, perhaps answering a message (by id).
    Text {
        text: String,
        reply_to: Option<String>,
    },
    /// New text for one of your messages.
    Edit { id: String, text: String },
    /// Retracts one of your messages.
    Delete { id: String },
    /// A reaction to a message.
    React {
        id: String,
        emoji: String,
        remove: bool,
    },
}

impl Outgoing {
    async fn queue(
        &self,
        conn: &mut postern_client::Connection,
        to: &Target,
    ) -> Result<postern_client::PendingSend, ClientError> {
        use postern_proto::content::{Text, content::Body};
        conn.sync().await?;
        let (body, reply_to) = match self {
            Outgoing::Text { text, reply_to } => {
                let reply_to = match reply_to {
                    Some(id) => Some(conn.find_message(to, id).await?),
                    None => None,
                };
                (Body::Text(Text { text: text.clone() }), reply_to)
            }
            Outgoing::Edit { id, text } => {
                (Body::edit(conn.find_message(to, id).await?, text), None)
            }
            Outgoing::Delete { id } => (Body::delete(conn.find_message(to, id).await?), None),
            Outgoing::React { id, emoji, remove } => (
                Body::reaction(conn.find_message(to, id).await?, emoji, *remove),
                None,
            ),
        };
        conn.queue_body(to, body, reply_to).await
    }
}

pub async fn send(home: &Path, to: &str, what: Outgoing) -> anyhow::Result<()> {
    let to: Target = to.parse().expect("infallible");
    let client = Client::open(home)?;
    if client.device().is_none() {
        return Err(ClientError::NotRegistered.into());
    }
    let mut queued: Option<[u8; 16]> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut conn = client.connect().await?;
            let id = match queued {
                Some(id) => id,
                None => {
                    let p = what.queue(&mut conn, &to).await?;
                    queued = Some(p.client_message_id);
                    p.client_message_id
                }
            };
            // Sends, in order, whatever earlier runs left and this message;
            // a message that reached the server before a broken connection
            // is sent again with the same id and stored once.
            let done = conn.flush_outbox().await?;
            Ok::<_, ClientError>(done.into_iter().find(|(p, _)| p.client_message_id == id))
        }
        .await;
        match result {
            Ok(Some((_, sent))) => {
                let note = if sent.duplicate {
                    "; it had arrived before"
                } else {
                    ""
                };
                println!(
                    "Sent (stored by the server at {} UTC{note}).",
                    format_time(sent.received_at_ms)
                );
                return Ok(());
            }
            Ok(None) => bail!(
                "the message left the outbox without a confirmation; check with recv on the other side"
            ),
            Err(e) if e.is_transient() && attempt < SEND_ATTEMPTS => {
                eprintln!("{e}; retrying…");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn recv(home: &Path, wait: Option<f64>, json: bool) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    if client.device().is_none() {
        return Err(ClientError::NotRegistered.into());
    }
    match wait {
        Some(secs) => {
            if !(secs.is_finite() && secs >= 0.0) {
                bail!("--wait takes a number of seconds, like 5 or 0.5");
            }
            let (client, mut conn) = connect(home).await?;
            announce_new_notices(&client, &conn).await;
            conn.flush_outbox().await?;
            let idle = Duration::from_secs_f64(secs);
            while let Ok(next) = tokio::time::timeout(idle, conn.recv()).await {
                match next? {
                    Some(m) => print_message(&m, json)?,
                    None => bail!("the server closed the connection"),
                }
            }
            Ok(())
        }
        None => {
            if let Ok((_, conn)) = connect(home).await {
                announce_new_notices(&client, &conn).await;
            }
            let mut listener = client.listen();
            let interactive = std::io::stderr().is_terminal();
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    event = listener.next() => match event? {
                        Event::Message(m) => print_message(&m, json)?,
                        Event::State(s) => {
                            if interactive || !matches!(
                                s,
                                ConnectionState::Connecting | ConnectionState::Updating { .. }
                            ) {
                                eprintln!("[{}]", describe(&s));
                            }
                        }
                    },
                }
            }
        }
    }
}

fn describe(s: &ConnectionState) -> String {
    match s {
        ConnectionState::Connecting => "connecting".into(),
        ConnectionState::ConnectingToRelay => "connecting to a relay".into(),
        ConnectionState::Updating { route } => format!("updating (over {route})"),
        ConnectionState::Ready { route } => format!("ready (over {route})"),
        ConnectionState::WaitingForNetwork { reason, retry_in } => {
            format!(
                "waiting for network: {reason}; retrying in {:.1} s",
                retry_in.as_secs_f64()
            )
        }
        ConnectionState::Disconnected { reason, retry_in } => {
            format!(
                "disconnected: {reason}; retrying in {:.1} s",
                retry_in.as_secs_f64()
            )
        }
    }
}

pub async fn history(home: &Path, to: &str, limit: usize, json: bool) -> anyhow::Result<()> {
    let client = Client::open(home)?;
    let target: Target = to.parse().expect("infallible");
    let Some(c) = client.find_conversation(&target)? else {
        bail!("no conversation {to} on this device (`postern group list` shows them)");
    };
    let conversation = client.conversation_name(&c);
    for item in client.with_home(|h| h.timeline(&c.group_id, limit))? {
        let from = item
            .sender
            .map(|s| client.name_of(s.account))
            .unwrap_or_default();
        let m = ReceivedMessage {
            conversation: conversation.clone(),
            from,
            item,
        };
        print_message(&m, json)?;
    }
    Ok(())
}

fn print_message(m: &ReceivedMessage, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let item = &m.item;
    if json {
        let line = serde_json::json!({
            "conversation": m.conversation,
            "group_id": hex::encode(&item.group_id),
            "message_id": item.message_id.map(hex::encode),
            "from": m.from,
            "from_account": item.sender.map(|s| s.account.to_string()),
            "from_device": item.sender.map(|s| s.device),
            "system": item.system,
            "text": item.body,
            "sent_at": item.sent_at,
            "received_at": item.received_at,
            "id": item.id,
        });
        writeln!(out, "{line}")?;
    } else if item.system {
        writeln!(
            out,
            "{} [{}] * {}",
            format_time(item.received_at),
            m.conversation,
            item.body
        )?;
    } else {
        writeln!(
            out,
            "{} [{}] {}: {}  ({})",
            format_time(item.sent_at),
            m.conversation,
            m.from,
            item.body,
            item.message_id
                .map(|id| postern_client::chat::short_id(&id))
                .unwrap_or_default()
        )?;
    }
    out.flush()?;
    Ok(())
}

/// `HH:MM:SS` UTC; enough to read a conversation without a date library.
pub(crate) fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

pub async fn whoami(home: &Path, json: bool) -> anyhow::Result<()> {
    let (_, conn) = connect(home).await?;
    if conn.device().is_none() {
        return Err(ClientError::NotRegistered.into());
    }
    let me = conn.whoami().await?;
    if json {
        let devices: Vec<_> = me
            .devices
            .iter()
            .map(|d| serde_json::json!({"device_id": d.device_id, "name": d.name, "created_at": d.created_at_ms}))
            .collect();
        let v = serde_json::json!({
            "account": me.account.to_string(),
            "device_id": me.device_id,
            "phone": me.phone,
            "username": me.username,
            "devices": devices,
        });
        println!("{v}");
    } else {
        println!("account:  {}", me.account);
        if me.phone.is_empty() {
            println!("phone:    (not known on this device; the server keeps no clear copy)");
        } else {
            println!("phone:    {}", me.phone);
        }
        println!(
            "username: {}",
            me.username
                .as_deref()
                .map(|u| format!("@{u}"))
                .unwrap_or_else(|| "(none)".into())
        );
        println!("device:   {} of {}", me.device_id, me.devices.len());
    }
    Ok(())
}

pub async fn set_username(home: &Path, name: &str) -> anyhow::Result<()> {
    let (_, conn) = connect(home).await?;
    if conn.device().is_none() {
        return Err(ClientError::NotRegistered.into());
    }
    match conn.set_username(name).await? {
        Some(name) => println!("Username set to @{name}."),
        None => println!("Username cleared."),
    }
    Ok(())
}
