//! The signed directory the server publishes (`GET /directory` on the HTTP
//! API and the `FetchDirectory` request on every carrier).
//!
//! In production the directory key lives offline: the operator signs a
//! directory with `postern directory sign` and points `[directory] file` at
//! the result, with `[directory] vkey` its verifier key. The server checks
//! the file before publishing it (signed by that key, not expired) and
//! re-reads it when it changes, publishing only a newer version.
//!
//! With no file configured, the server signs a development directory
//! itself with a key it keeps in the data directory (`directory.key`),
//! listing its own endpoints, log key and witnesses, and says so in its
//! log: that key is online, so whoever takes the server takes the key.
//!
//! This module must never publish a directory the pinned key did not sign:
//! clients would refuse it anyway, and the operator should hear about it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use postern_proto::directory::{self, Accepted, Carrier, Directory, Endpoint, SignedDirectory};
use postern_tlog::note::{Algorithm, Signer, Verifier};
use tokio::sync::watch;

use crate::config::DirectoryConfig;

/// The development directory key (`skey`, mode 0600) in the data directory.
pub const KEY_FILE: &str = "directory.key";
/// The directory's verifier key (`vkey`) in the data directory.
pub const VKEY_FILE: &str = "directory-vkey.txt";

/// The directory being published; cheap to share.
#[derive(Debug, Default)]
pub struct Published {
    current: RwLock<Option<Arc<SignedDirectory>>>,
}

impl Published {
    /// The signed directory now published, if any.
    pub fn current(&self) -> Option<Arc<SignedDirectory>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, d: SignedDirectory) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(d));
    }
}

/// What the server knows about itself that a development directory lists.
pub(crate) struct Facts<'a> {
    pub tcp: &'a [String],
    pub noise_key: [u8; 32],
    pub log_key: Option<&'a Verifier>,
    pub witnesses: Vec<String>,
    pub origin: String,
}

/// A started publisher: the key clients pin and the task that keeps the
/// directory fresh.
pub(crate) struct Publisher {
    pub published: Arc<Published>,
    pub key: Verifier,
    pub task: futures::future::BoxFuture<'static, ()>,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts publishing: from the configured file, or a development directory.
pub(crate) fn start(
    cfg: &DirectoryConfig,
    data_dir: &Path,
    facts: Facts<'_>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Publisher> {
    let published = Arc::new(Published::default());
    if let Some(file) = &cfg.file {
        let vkey = cfg.vkey.as_deref().context(
            "[directory] file needs [directory] vkey, the verifier key printed by \
             `postern directory keygen`",
        )?;
        let key = Verifier::from_vkey(vkey)
            .map_err(|e| anyhow::anyhow!("[directory] vkey is not a verifier key: {e}"))?;
        let signed = load_file(file, &key, None)?.context("no directory to publish")?;
        tracing::info!(
            file = %file.display(),
            version = signed.directory().version,
            "publishing the signed directory"
        );
        published.set(signed);
        let task = Box::pin(watch_file(
            file.clone(),
            key.clone(),
            published.clone(),
            cfg.reload_interval,
            stop,
        ));
        std::fs::write(data_dir.join(VKEY_FILE), format!("{}\n", key.vkey()))
            .with_context(|| format!("cannot write {VKEY_FILE}"))?;
        return Ok(Publisher {
            published,
            key,
            task,
        });
    }

    let name = format!("{}/directory", facts.origin);
    let key_path = data_dir.join(KEY_FILE);
    let signer = Signer::load_or_generate(&key_path, &name, Algorithm::Ed25519).or_else(|e| {
        // A key made under another origin stays the key: clients pinned it.
        std::fs::read_to_string(&key_path)
            .ok()
            .and_then(|t| Signer::from_skey(t.trim()).ok())
            .ok_or(e)
    })?;
    let key = signer.verifier();
    std::fs::write(data_dir.join(VKEY_FILE), format!("{}\n", key.vkey()))
        .with_context(|| format!("cannot write {VKEY_FILE}"))?;
    tracing::warn!(
        vkey = %key.vkey(),
        "no [directory] file configured: signing a development directory with the online \
         key {KEY_FILE} in the data directory; in production sign the directory offline \
         with `postern directory sign` and set [directory] file and vkey"
    );
    let template = Directory {
        origin: facts.origin,
        version: 0,
        expires: 0,
        noise_key: facts.noise_key,
        nodes: Vec::new(),
        endpoints: facts
            .tcp
            .iter()
            .enumerate()
            .filter_map(|(i, addr)| tcp_endpoint(addr, i))
            .collect(),
        relays: cfg.public_relays.clone(),
        log_key: facts.log_key.map(Verifier::vkey),
        witnesses: facts.witnesses,
    };
    let validity = cfg.validity;
    let sign_now = move |published: &Published| -> anyhow::Result<()> {
        let now = now_secs();
        let held = published.current().map(|d| d.directory().version);
        let d = Directory {
            version: now.max(held.map_or(0, |v| v + 1)),
            expires: now + validity.as_secs().max(60),
            ..template.clone()
        };
        published.set(d.sign(&signer).context("cannot sign the directory")?);
        Ok(())
    };
    sign_now(&published)?;
    let republish = published.clone();
    let mut stop = stop;
    let task = Box::pin(async move {
        // Re-signed at half its validity, so clients never hold an expired one.
        let mut tick = tokio::time::interval((validity / 2).max(Duration::from_secs(30)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = sign_now(&republish) {
                tracing::error!(error = %e, "re-signing the development directory failed");
            }
        }
    });
    Ok(Publisher {
        published,
        key,
        task,
    })
}

fn tcp_endpoint(addr: &str, i: usize) -> Option<Endpoint> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(Endpoint {
        carrier: Carrier::Tcp,
        host: host.to_ascii_lowercase(),
        port: port.parse().ok()?,
        priority: u32::try_from(i).unwrap_or(u32::MAX).saturating_mul(10),
        sni: None,
        path: None,
        node: None,
        cert_sha256: None,
    })
}

/// Reads and checks the signed file; `Ok(None)` if it is the one held.
fn load_file(
    path: &PathBuf,
    key: &Verifier,
    held: Option<&SignedDirectory>,
) -> anyhow::Result<Option<SignedDirectory>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the signed directory {}", path.display()))?;
    match directory::accept(&bytes, key, now_secs(), held) {
        Ok(Accepted::Newer(d)) => Ok(Some(*d)),
        Ok(Accepted::Same) => Ok(None),
        Err(e) => bail!("refusing to publish {}: {e}", path.display()),
    }
}

async fn watch_file(
    path: PathBuf,
    key: Verifier,
    published: Arc<Published>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = mtime(&path);
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let now = mtime(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let held = published.current();
        match load_file(&path, &key, held.as_deref()) {
            Ok(Some(d)) => {
                tracing::info!(version = d.directory().version, "published a new directory");
                published.set(d);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "keeping the directory already published"),
        }
    }
}
