//! The transparency log the server hosts: its own signing key, the
//! sequencer that batches appends and gets each checkpoint cosigned by the
//! configured witnesses, and [`TransparencyLog`], the handle through which
//! other parts of the server append typed entries.
//!
//! The log key signs checkpoints and nothing else; it is never the Noise
//! key nor any other key, so a compromise of one does not forge the
//! other. Entries are `postern_tlog::entry` records, which hold no personal
//! data; this module must never log or append anything else.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use postern_tlog::entry::{Entry, EntryError};
use postern_tlog::http::WitnessClient;
use postern_tlog::note::{Algorithm, KeyError, KeyFileError, Signer, Verifier};
use postern_tlog::sequencer::{Sequencer, SequencerConfig, SequencerError};
use postern_tlog::{LogWriter, Policy};
use tokio::task::JoinHandle;

use crate::config::TransparencyConfig;

/// The log's signing key (`skey`, mode 0600) in the data directory.
pub const KEY_FILE: &str = "log.key";
/// The log's verifier key (`vkey`) in the data directory, to publish.
pub const VKEY_FILE: &str = "log-vkey.txt";
/// The log's directory (checkpoint and tiles) in the data directory; a
/// static copy of it is a complete mirror of the log.
pub const LOG_DIR: &str = "log";

/// Why an entry did not make it into the log.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The entry is not a valid record.
    #[error("the entry is not a valid log record: {0}")]
    Entry(#[from] EntryError),
    /// The log could not publish it, or is stopped.
    #[error(transparent)]
    Log(#[from] SequencerError),
}

/// A handle to the server's transparency log; cheap to clone.
#[derive(Clone, Debug)]
pub struct TransparencyLog {
    sequencer: Sequencer,
    policy: Policy,
    dir: PathBuf,
}

impl TransparencyLog {
    /// Appends `entry` and returns its index once a signed checkpoint that
    /// includes it is published (at most about one checkpoint interval).
    /// Witness cosignatures are added to that checkpoint right after.
    pub async fn append(&self, entry: &Entry) -> Result<u64, AppendError> {
        Ok(self.sequencer.append(entry.encode()?).await?)
    }

    /// The log's verifier key; its name is the log's origin.
    pub fn key(&self) -> &Verifier {
        &self.policy.log
    }

    /// What a verifier of this log should require: the log's key and the
    /// configured witnesses with their quorum.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The directory the log is written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The running log: the handle, and what the server needs to stop it.
pub(crate) struct Hosted {
    pub(crate) log: TransparencyLog,
    task: JoinHandle<()>,
}

impl Hosted {
    /// Publishes what is queued and stops the sequencer, even if other
    /// handles remain.
    pub(crate) async fn stop(self) {
        self.log.sequencer.close();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the transparency log's task failed");
        }
    }
}

/// Loads (or creates) the log's key, writes its vkey, opens the log in
/// `DATA_DIR/log` and starts its sequencer. `public` is the address the
/// server link names, from which a first-start origin is derived.
pub(crate) async fn start(
    cfg: &TransparencyConfig,
    data_dir: &Path,
    public: &str,
) -> anyhow::Result<Hosted> {
    anyhow::ensure!(
        !cfg.checkpoint_interval.is_zero(),
        "transparency.checkpoint_interval must be at least 1 second"
    );
    let mut witnesses = Vec::new();
    let mut witness_keys = Vec::new();
    for w in &cfg.witnesses {
        let key = Verifier::from_vkey(&w.vkey).with_context(|| {
            format!(
                "transparency.witnesses: {:?} is not a witness verifier key (NAME+KEYID+BASE64)",
                w.vkey
            )
        })?;
        anyhow::ensure!(
            w.url.starts_with("http://") || w.url.starts_with("https://"),
            "transparency.witnesses: the url {:?} must start with http:// or https://",
            w.url
        );
        witnesses.push(
            WitnessClient::new(&w.url, key.to_cosigner())
                .map_err(|e| anyhow::anyhow!("cannot set up an HTTP client: {e}"))?,
        );
        witness_keys.push(key);
    }
    let quorum = cfg.quorum.unwrap_or(witnesses.len());
    anyhow::ensure!(
        quorum <= witnesses.len(),
        "transparency.quorum is {quorum}, more than the {} configured witnesses",
        witnesses.len()
    );

    let key_path = data_dir.join(KEY_FILE);
    let signer = load_or_create_key(&key_path, cfg.origin.as_deref(), public)?;
    let vkey_path = data_dir.join(VKEY_FILE);
    std::fs::write(&vkey_path, format!("{}\n", signer.verifier().vkey()))
        .with_context(|| format!("cannot write {}", vkey_path.display()))?;

    let dir = data_dir.join(LOG_DIR);
    let policy = Policy {
        log: signer.verifier(),
        witnesses: witness_keys,
        quorum,
    };
    // Reopening reads back and checks every level-0 tile: not for an
    // async worker.
    let open_dir = dir.clone();
    let writer = tokio::task::spawn_blocking(move || LogWriter::open(&open_dir, signer))
        .await
        .context("opening the transparency log failed")?
        .with_context(|| format!("cannot open the transparency log in {}", dir.display()))?;
    tracing::info!(
        origin = writer.origin(),
        size = writer.size(),
        witnesses = witnesses.len(),
        quorum,
        "transparency log opened"
    );
    let (sequencer, task) = Sequencer::spawn(
        writer,
        SequencerConfig {
            interval: cfg.checkpoint_interval,
            witnesses,
            quorum,
            ..SequencerConfig::default()
        },
    );
    Ok(Hosted {
        log: TransparencyLog {
            sequencer,
            policy,
            dir,
        },
        task,
    })
}

/// The log's key: the one in `path`, or a new Ed25519 key written there
/// (mode 0600). Its name is the origin: `configured` if given (an existing
/// key must carry it), else the existing key's, else derived from the
/// server's public address.
fn load_or_create_key(
    path: &Path,
    configured: Option<&str>,
    public: &str,
) -> anyhow::Result<Signer> {
    let name = match configured {
        Some(origin) => origin.to_owned(),
        None => match std::fs::read_to_string(path).map(zeroize::Zeroizing::new) {
            Ok(text) => Signer::from_skey(text.trim())
                .with_context(|| format!("{} is not a transparency log key", path.display()))?
                .name()
                .to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => default_origin(public),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        },
    };
    Signer::load_or_generate(path, &name, Algorithm::Ed25519).map_err(|e| match (&e, configured) {
        (KeyFileError::Mismatch { found, .. }, Some(origin)) => anyhow::anyhow!(
            "{} holds the log key {found}, but transparency.origin is {origin:?}: \
             a log's origin never changes (remove the setting to keep this log)",
            path.display()
        ),
        (KeyFileError::Key(_, KeyError::BadName), _) => anyhow::anyhow!(
            "{name:?} cannot be the transparency log's origin (it must be non-empty, without \
             spaces or '+'); set transparency.origin, e.g. \"chat.example.org/log\""
        ),
        _ => anyhow::Error::new(e).context("cannot load the transparency log's key"),
    })
}

/// `HOST/log` for a `HOST:PORT` public address: a C2SP origin is a
/// schema-less URL, and the port is left out so the origin does not
/// change with it.
fn default_origin(public: &str) -> String {
    let host = match public.parse::<SocketAddr>() {
        Ok(addr) => match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
        Err(_) => public
            .rsplit_once(':')
            .map_or(public, |(h, _)| h)
            .to_owned(),
    };
    format!("{host}/log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_origin_is_the_public_host() {
        assert_eq!(
            default_origin("chat.example.org:7447"),
            "chat.example.org/log"
        );
        assert_eq!(default_origin("127.0.0.1:7447"), "127.0.0.1/log");
        assert_eq!(default_origin("[2001:db8::1]:443"), "[2001:db8::1]/log");
        assert_eq!(default_origin("chat.example.org"), "chat.example.org/log");
    }

    #[test]
    fn the_key_keeps_its_origin_unless_one_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = load_or_create_key(&path, None, "a.example:1").unwrap();
        assert_eq!(first.name(), "a.example/log");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A new public address does not rename the log.
        let again = load_or_create_key(&path, None, "b.example:1").unwrap();
        assert_eq!(again.verifier().vkey(), first.verifier().vkey());
        // Naming it as it is named is fine; naming it otherwise is refused.
        assert!(load_or_create_key(&path, Some("a.example/log"), "x:1").is_ok());
        let err = load_or_create_key(&path, Some("c.example/log"), "x:1").unwrap_err();
        assert!(
            format!("{err:#}").contains("origin never changes"),
            "{err:#}"
        );
    }
}
