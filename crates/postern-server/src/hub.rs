//! Wake-ups for connected devices: when a message is queued for a device,
//! every connection of that device on this node is told to fetch.
//!
//! A wake-up carries no data; the store is the source of truth, so a lost
//! wake-up only delays delivery until the next fetch, never loses a message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use postern_proto::ids::DeviceAddr;
use tokio::sync::Notify;

/// Registry of the connections subscribed on this node.
#[derive(Default)]
pub struct Hub {
    devices: Mutex<HashMap<DeviceAddr, Vec<Arc<Notify>>>>,
}

impl Hub {
    /// Registers a connection's notifier for `device` until the guard drops.
    pub fn subscribe(self: &Arc<Self>, device: DeviceAddr, notify: Arc<Notify>) -> Subscription {
        self.lock().entry(device).or_default().push(notify.clone());
        Subscription {
            hub: self.clone(),
            device,
            notify,
        }
    }

    /// Wakes every subscribed connection of `device`.
    pub fn wake(&self, device: &DeviceAddr) {
        if let Some(list) = self.lock().get(device) {
            for n in list {
                n.notify_one();
            }
        }
    }

    /// Connections currently subscribed.
    pub fn subscribed(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceAddr, Vec<Arc<Notify>>>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a connection registered; unregisters on drop.
pub struct Subscription {
    hub: Arc<Hub>,
    device: DeviceAddr,
    notify: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut map = self.hub.lock();
        if let Some(list) = map.get_mut(&self.device) {
            list.retain(|n| !Arc::ptr_eq(n, &self.notify));
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

    #[tokio::test]
    async fn wakes_only_subscribers_and_forgets_dropped_ones() {
        let hub = Arc::new(Hub::default());
        let dev = DeviceAddr {
            account: AccountId([1; 16]),
            device: 1,
        };
        let n = Arc::new(Notify::new());
        let sub = hub.subscribe(dev, n.clone());
        hub.wake(&dev);
        n.notified().await;
        assert_eq!(hub.subscribed(), 1);
        drop(sub);
        assert_eq!(hub.subscribed(), 0);
        hub.wake(&dev);
    }
}
