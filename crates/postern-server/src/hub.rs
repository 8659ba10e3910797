//! Wake-ups for connected devices: when a message is queued for a device,
//! every subscribed connection of that device on this node gets it.
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
    devices: Mutex<HashMap<DeviceAddr, Vec<Arc<Mailbox>>>>,
}

impl Hub {
    /// Registers a connection's mailbox for `device` until the guard drops.
    pub fn subscribe(self: &Arc<Self>, device: DeviceAddr) -> Subscription {
        let mailbox = Arc::new(Mailbox::default());
        lock(&self.devices)
            .entry(device)
            .or_default()
            .push(mailbox.clone());
        Subscription {
            hub: self.clone(),
            device,
            mailbox,
        }
    }

    /// Hands a committed message to every subscribed connection of `device`.
    pub fn deliver(&self, device: &DeviceAddr, message: &Arc<pb::QueuedMessage>) {
        if let Some(list) = lock(&self.devices).get(device) {
            for m in list {
                m.put(Some(message));
            }
        }
    }

    /// Tells every subscribed connection of `device` to fetch from the store.
    pub fn wake(&self, device: &DeviceAddr) {
        if let Some(list) = lock(&self.devices).get(device) {
            for m in list {
                m.put(None);
            }
        }
    }

    /// Connections currently subscribed.
    pub fn subscribed(&self) -> usize {
        lock(&self.devices).values().map(Vec::len).sum()
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
        if let Some(list) = map.get_mut(&self.device) {
            list.retain(|m| !Arc::ptr_eq(m, &self.mailbox));
            if list.is_empty() {
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
