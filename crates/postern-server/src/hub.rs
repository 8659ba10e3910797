//! Wake-ups for connected devices: when a message is queued for a device,
//! every subscribed connection of that device on this node gets it, and,
//! when several nodes share the store, the other nodes are told through
//! NATS ([`Fanout`]).
//!
//! Each connection has a [`Mailbox`]. A freshly committed message is handed
//! over in memory, so the connection can push it without reading it back
//! from the store; the mailbox is small and bounded, and anything it cannot
//! hold, or any gap in the sequence, makes the connection fetch from the
//! store instead. The store is the source of truth: a lost or dropped
//! hand-over only costs a fetch, never a message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postern_proto::ids::DeviceAddr;
use postern_proto::pb;
use tokio::sync::Notify;

/// Messages a mailbox holds before it only records that it overflowed.
pub const MAILBOX_CAPACITY: usize = 256;

/// A connection's inbox of freshly committed messages.
#[derive(Default)]
pub struct Mailbox {
    notify: Notify,
    inbox: Mutex<Inbox>,
}

/// What a mailbox holds.
#[derive(Default)]
pub struct Inbox {
    /// Messages handed over, in no particular order.
    pub messages: Vec<Arc<pb::QueuedMessage>>,
    /// Something was dropped (or only a wake-up came): fetch from the store.
    pub overflowed: bool,
}

impl Mailbox {
    /// Waits until something was delivered or a wake-up came.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Takes everything delivered so far.
    pub fn take(&self) -> Inbox {
        std::mem::take(&mut *lock(&self.inbox))
    }

    fn put(&self, message: Option<&Arc<pb::QueuedMessage>>) {
        {
            let mut inbox = lock(&self.inbox);
            match message {
                Some(m) if inbox.messages.len() < MAILBOX_CAPACITY => {
                    inbox.messages.push(m.clone())
                }
                _ => inbox.overflowed = true,
            }
        }
        self.notify.notify_one();
    }
}

/// Registry of the connections subscribed on this node.
#[derive(Default)]
pub struct Hub {
    devices: Mutex<HashMap<DeviceAddr, Local>>,
    fanout: Option<Fanout>,
}

/// The connections of one device on this node, and its NATS subscription.
#[derive(Default)]
struct Local {
    mailboxes: Vec<Arc<Mailbox>>,
    sid: Option<u64>,
}

/// Wake-ups between nodes over NATS core pub/sub.
///
/// Each node subscribes to `PREFIX.wake.ACCOUNT.DEVICE` for the devices
/// connected to it, and publishes on that subject for every copy it
/// queues. A wake-up carries nothing but the subject: the receiving node
/// fetches from the store, which stays the source of truth. NATS core is
/// at most once, so a wake-up lost (NATS down, a slow consumer) only
/// delays delivery: after a reconnect every local connection fetches, and
/// every connection also polls at the configured interval.
pub struct Fanout {
    client: postern_nats::Client,
    prefix: String,
}

impl Fanout {
    /// Wake-ups through `client` on subjects under `prefix`.
    pub fn new(client: postern_nats::Client, prefix: &str) -> Self {
        Fanout {
            client,
            prefix: format!("{prefix}.wake."),
        }
    }

    /// The NATS client.
    pub fn client(&self) -> &postern_nats::Client {
        &self.client
    }

    fn subject(&self, device: &DeviceAddr) -> String {
        format!(
            "{}{}.{}",
            self.prefix,
            hex::encode(device.account.0),
            device.device
        )
    }

    /// The device a wake-up subject names, if it is one of ours.
    fn device(&self, subject: &str) -> Option<DeviceAddr> {
        let rest = subject.strip_prefix(&self.prefix)?;
        let (account, device) = rest.split_once('.')?;
        let account = hex::decode(account).ok()?;
        Some(DeviceAddr {
            account: postern_proto::ids::AccountId::from_slice(&account)?,
            device: device.parse().ok()?,
        })
    }
}

impl Hub {
    /// A hub that also wakes other nodes through `fanout`.
    pub fn with_fanout(fanout: Fanout) -> Self {
        Hub {
            devices: Mutex::default(),
            fanout: Some(fanout),
        }
    }

    /// The NATS fan-out, if this node has one.
    pub fn fanout(&self) -> Option<&Fanout> {
        self.fanout.as_ref()
    }

    /// Registers a connection's mailbox for `device` until the guard drops.
    pub fn subscribe(self: &Arc<Self>, device: DeviceAddr) -> Subscription {
        let mailbox = Arc::new(Mailbox::default());
        let mut devices = lock(&self.devices);
        let local = devices.entry(device).or_default();
        if local.mailboxes.is_empty()
            && let Some(f) = &self.fanout
        {
            match f.client.subscribe(&f.subject(&device)) {
                Ok(sid) => local.sid = Some(sid),
                Err(e) => tracing::error!(error = %e, "cannot subscribe to wake-ups"),
            }
        }
        local.mailboxes.push(mailbox.clone());
        drop(devices);
        Subscription {
            hub: self.clone(),
            device,
            mailbox,
        }
    }

    /// Hands a committed message to every subscribed connection of `device`
    /// on this node, and wakes the other nodes.
    pub fn deliver(&self, device: &DeviceAddr, message: &Arc<pb::QueuedMessage>) {
        if let Some(local) = lock(&self.devices).get(device) {
            for m in &local.mailboxes {
                m.put(Some(message));
            }
        }
        // Always published, even with the device here: the same device may
        // also be connected to another node for a moment (a reconnect).
        if let Some(f) = &self.fanout
            && let Err(e) = f.client.publish(
                &f.subject(device),
                bytes::Bytes::copy_from_slice(&message.seq.to_be_bytes()),
            )
        {
            tracing::warn!(error = %e, "cannot publish a wake-up");
        }
    }

    /// Tells every subscribed connection of `device` on this node to fetch
    /// from the store.
    pub fn wake(&self, device: &DeviceAddr) {
        if let Some(local) = lock(&self.devices).get(device) {
            for m in &local.mailboxes {
                m.put(None);
            }
        }
    }

    /// Handles a wake-up another node published on `subject`.
    pub fn wake_subject(&self, subject: &str) {
        if let Some(device) = self.fanout.as_ref().and_then(|f| f.device(subject)) {
            self.wake(&device);
        }
    }

    /// Tells every subscribed connection on this node to fetch: after
    /// wake-ups may have been lost, and as the periodic poll.
    pub fn wake_all(&self) -> usize {
        let devices = lock(&self.devices);
        let mut woken = 0;
        for local in devices.values() {
            for m in &local.mailboxes {
                m.put(None);
                woken += 1;
            }
        }
        woken
    }

    /// Connections currently subscribed.
    pub fn subscribed(&self) -> usize {
        lock(&self.devices)
            .values()
            .map(|l| l.mailboxes.len())
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a connection registered; unregisters on drop.
pub struct Subscription {
    hub: Arc<Hub>,
    device: DeviceAddr,
    mailbox: Arc<Mailbox>,
}

impl Subscription {
    /// This connection's mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = lock(&self.hub.devices);
        if let Some(local) = map.get_mut(&self.device) {
            local.mailboxes.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
            if local.mailboxes.is_empty() {
                if let (Some(sid), Some(f)) = (local.sid, &self.hub.fanout) {
                    f.client.unsubscribe(sid);
                }
                map.remove(&self.device);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_proto::ids::AccountId;

    fn dev() -> DeviceAddr {
        DeviceAddr {
            account: AccountId([1; 16]),
            device: 1,
        }
    }

    fn msg(seq: u64) -> Arc<pb::QueuedMessage> {
        Arc::new(pb::QueuedMessage {
            seq,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn delivers_only_to_subscribers_and_forgets_dropped_ones() {
        let hub = Arc::new(Hub::default());
        let sub = hub.subscribe(dev());
        hub.deliver(&dev(), &msg(1));
        sub.mailbox().notified().await;
        let inbox = sub.mailbox().take();
        assert_eq!(inbox.messages.len(), 1);
        assert!(!inbox.overflowed);
        assert_eq!(hub.subscribed(), 1);
        drop(sub);
        assert_eq!(hub.subscribed(), 0);
        hub.deliver(&dev(), &msg(2));
    }

    #[tokio::test]
    async fn a_full_mailbox_overflows_to_a_fetch() {
        let hub = Arc::new(Hub::default());
        let sub = hub.subscribe(dev());
        for seq in 0..(MAILBOX_CAPACITY as u64 + 5) {
            hub.deliver(&dev(), &msg(seq));
        }
        let inbox = sub.mailbox().take();
        assert_eq!(inbox.messages.len(), MAILBOX_CAPACITY);
        assert!(inbox.overflowed);
        hub.wake(&dev());
        assert!(sub.mailbox().take().overflowed);
    }
}
