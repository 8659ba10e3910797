//! `postern demo`: a server and two members in a temporary directory, and
//! a short conversation between them, over real loopback sockets.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use postern_client::{Client, Recipient, Target};
use postern_server::{RunningServer, Server, ServerConfig};

const ALICE: &str = "+14155552671";
const BOB: &str = "+14155552672";

pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let outbox = dir.path().join("sms-outbox.jsonl");
    let mut cfg = ServerConfig {
        data_dir: dir.path().join("server"),
        listen: "127.0.0.1:0".parse()?,
        http_listen: "127.0.0.1:0".parse()?,
        ..ServerConfig::default()
    };
    cfg.sms.outbox = Some(outbox.clone());
    let server = Server::start(cfg).await?;
    println!(
        "1. A server is listening on {} (data in a temporary directory).",
        server.client_addr
    );
    println!("   Its link: {}", server.link);

    let alice = member(&server, dir.path(), "alice", ALICE, &outbox).await?;
    let bob = member(&server, dir.path(), "bob", BOB, &outbox).await?;

    let conversation = [
        (&alice, "bob", "Hi Bob, are you getting through today?"),
        (
            &bob,
            "alice",
            "Yes, through Postern. The usual app is blocked again.",
        ),
        (&alice, "bob", "Good. See you at six."),
    ];
    println!("3. They talk (each line: sent, stored by the server, received):");
    for (from, to, text) in conversation {
        let mut conn = from.connect().await?;
        conn.send_text(&Target::Contact(Recipient::Username(to.into())), text)
            .await?;
        let receiver = if to == "bob" { &bob } else { &alice };
        let mut rconn = receiver.connect().await?;
        rconn.sync().await?;
        let m = loop {
            let m = tokio::time::timeout(Duration::from_secs(10), rconn.recv())
                .await
                .context("the message did not arrive within 10 s")??
                .context("the connection closed")?;
            if !m.is_system() {
                break m;
            }
        };
        println!("   {} -> @{to}: {}", m.from, m.text());
    }
    println!("4. Every message was end-to-end encrypted with MLS: the server stored");
    println!("   and forwarded ciphertext only. Try it yourself: see README, \"Walkthrough\".");
    shutdown(server).await;
    Ok(())
}

async fn member(
    server: &RunningServer,
    dir: &Path,
    name: &str,
    phone: &str,
    outbox: &Path,
) -> anyhow::Result<Client> {
    let client = Client::setup(&dir.join(name), &server.link)?;
    let mut conn = client.connect().await?;
    conn.request_code(phone).await?;
    let code = postern_server::sms::outbox_code(outbox, phone)?
        .context("the code did not reach the SMS outbox")?;
    let addr = conn.register(phone, &code, Some(name), "demo").await?;
    println!(
        "2. @{name} registered {phone} with SMS code {code} (account {}).",
        addr.account
    );
    Ok(client)
}

async fn shutdown(server: RunningServer) {
    server.shutdown().await;
}
