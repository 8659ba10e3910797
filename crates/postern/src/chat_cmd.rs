//! The member's commands for conversations and devices: `group …`,
//! `device …` and `verify`. Logic lives in postern-client; these only
//! connect, call it and print.

use std::path::Path;

use anyhow::{Context, bail};
use postern_client::{Client, ClientError, Connection, ConversationKind, Recipient, Target};
use postern_proto::link::DeviceLink;

use crate::client_cmd::connect;

async fn registered(home: &Path) -> anyhow::Result<(Client, Connection)> {
    let (client, mut conn) = connect(home).await?;
    if conn.device().is_none() {
        return Err(ClientError::NotRegistered.into());
    }
    conn.sync().await?;
    Ok((client, conn))
}

fn recipients(list: &[String]) -> Vec<Recipient> {
    list.iter()
        .map(|m| m.parse().expect("infallible"))
        .collect()
}

fn group(s: &str) -> anyhow::Result<Target> {
    match s.parse().expect("infallible") {
        Target::Contact(_) => bail!("groups are named #NAME (or #ID); {s:?} names a contact"),
        t => Ok(t),
    }
}

pub async fn group_create(home: &Path, name: &str, members: &[String]) -> anyhow::Result<()> {
    let name = name.strip_prefix('#').unwrap_or(name);
    let (_, mut conn) = registered(home).await?;
    let c = conn.create_group(name, &recipients(members)).await?;
    println!(
        "Created #{} ({} members) — id #{}.",
        c.name,
        members.len() + 1,
        hex::encode(&c.group_id)
    );
    Ok(())
}

pub async fn group_add(home: &Path, target: &str, members: &[String]) -> anyhow::Result<()> {
    let (_, mut conn) = registered(home).await?;
    conn.add_members(&group(target)?, &recipients(members))
        .await?;
    println!("Added {} to {target}.", members.join(", "));
    Ok(())
}

pub async fn group_remove(home: &Path, target: &str, members: &[String]) -> anyhow::Result<()> {
    let (_, mut conn) = registered(home).await?;
    conn.remove_members(&group(target)?, &recipients(members))
        .await?;
    println!("Removed {} from {target}.", members.join(", "));
    Ok(())
}

pub async fn group_leave(home: &Path, target: &str) -> anyhow::Result<()> {
    let (_, mut conn) = registered(home).await?;
    conn.leave_group(&group(target)?).await?;
    println!("You left {target}.");
    Ok(())
}

pub async fn group_list(home: &Path, json: bool) -> anyhow::Result<()> {
    let (client, conn) = registered(home).await?;
    let conversations = client.with_home(|h| h.conversations())?;
    let mut rows = Vec::new();
    for c in conversations {
        let members: Vec<String> = conn
            .group_members(&c.group_id)?
            .into_iter()
            .map(|m| format!("{}/{}", m.name, m.device.device))
            .collect();
        rows.push((c, members));
    }
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(c, members)| {
                serde_json::json!({
                    "id": hex::encode(&c.group_id),
                    "kind": match c.kind { ConversationKind::Direct => "direct", ConversationKind::Group => "group" },
                    "name": client.conversation_name(c),
                    "state": c.state,
                    "members": members,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if rows.is_empty() {
        println!("No conversations yet: `postern send @NAME TEXT` starts one.");
    }
    for (c, members) in rows {
        let state = if c.state == "active" {
            String::new()
        } else {
            format!(" ({})", c.state)
        };
        println!(
            "{}{state}  #{}\n    {}",
            client.conversation_name(&c),
            hex::encode(&c.group_id),
            members.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn print_qr(text: &str) -> anyhow::Result<()> {
    use qrcode::render::unicode::Dense1x2;
    let code =
        qrcode::QrCode::new(text.as_bytes()).context("the link is too long for a QR code")?;
    let image = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    println!("{image}");
    Ok(())
}

pub async fn device_link(home: &Path, qr: bool) -> anyhow::Result<()> {
    let (client, conn) = registered(home).await?;
    let token = conn.create_link_token().await?;
    let link = DeviceLink {
        server: client.link().clone(),
        token,
    };
    let text = link.to_string();
    if qr {
        print_qr(&text)?;
    }
    println!("{text}");
    eprintln!(
        "On the new device: postern --home NEW_DIR device add '{text}'\n\
         The link works once, within 10 minutes. Anyone holding it can add a device to \
         your account: show it only to your own device."
    );
    Ok(())
}

pub async fn device_add(home: &Path, link: &str, name: &str) -> anyhow::Result<()> {
    let link: DeviceLink = link
        .trim()
        .parse()
        .context("this is not a device link (postern://device?…)")?;
    let client = Client::setup(home, &link.server)?;
    let mut conn = client.connect().await.with_context(|| {
        format!(
            "cannot reach the server at {}",
            client.link().endpoints().join(", ")
        )
    })?;
    let addr = conn.link_device(&link.token, name).await?;
    let joined = client.with_home(|h| h.conversations())?.len();
    println!(
        "This device is now device {} of account {}; it joined {joined} conversation(s).",
        addr.device, addr.account
    );
    Ok(())
}

pub async fn device_list(home: &Path, json: bool) -> anyhow::Result<()> {
    let (_, conn) = registered(home).await?;
    let me = conn.whoami().await?;
    if json {
        let list: Vec<_> = me
            .devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "device_id": d.device_id,
                    "name": d.name,
                    "created_at": d.created_at_ms,
                    "this": d.device_id == me.device_id,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    for d in &me.devices {
        let this = if d.device_id == me.device_id {
            "  (this device)"
        } else {
            ""
        };
        println!(
            "{:>3}  {:<16} added {}{this}",
            d.device_id,
            if d.name.is_empty() { "-" } else { &d.name },
            crate::client_cmd::format_time(d.created_at_ms)
        );
    }
    Ok(())
}

pub async fn device_remove(home: &Path, id: u32) -> anyhow::Result<()> {
    let (_, mut conn) = registered(home).await?;
    let n = conn.remove_device(id).await?;
    println!(
        "Device {id} is removed: it can no longer connect, and was removed from {n} conversation(s)."
    );
    Ok(())
}

pub async fn verify(home: &Path, contact: &str, confirm: bool) -> anyhow::Result<()> {
    let contact: Recipient = contact.parse().expect("infallible");
    let (_, mut conn) = registered(home).await?;
    let report = if confirm {
        conn.mark_verified(&contact).await?
    } else {
        conn.safety_number(&contact).await?
    };
    println!("Safety number with {}:\n", report.contact);
    println!("{}\n", postern_client::safety::display(&report.number));
    match report.verified {
        Some((_, true)) if confirm => println!("Marked as verified."),
        Some((at, true)) => println!(
            "You verified this number (at {} UTC).",
            crate::client_cmd::format_time(at)
        ),
        Some((_, false)) => println!(
            "WARNING: this is NOT the number you verified before: {} has a new or changed \
             device key. Compare again before trusting new messages.",
            report.contact
        ),
        None => println!(
            "Compare it with {} in person or on a call; if it matches, run this again with --confirm.",
            report.contact
        ),
    }
    if report.changed && !matches!(report.verified, Some((_, false))) {
        println!(
            "Note: {}'s keys changed since this device last looked (a device was added, \
             removed or re-keyed).",
            report.contact
        );
    }
    Ok(())
}
