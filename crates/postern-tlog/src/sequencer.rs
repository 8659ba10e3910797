//! The tokio shell a server runs its log in (feature `http`): appends from
//! any task are batched, a checkpoint is published at a fixed interval (or
//! sooner when a batch is full), each new checkpoint is submitted to the
//! configured witnesses and their cosignatures are added to it.
//!
//! [`Sequencer::append`] resolves with the entry's index only once a
//! checkpoint containing it is on disk, so a caller can tell its user the
//! request is logged. The [`LogWriter`] it owns stays the only writer of
//! its directory.
//!
//! Cosignatures are added after the checkpoint is on disk, never before:
//! a witness must not cosign a tree the log could lose in a crash and then
//! grow differently. So a freshly published checkpoint is served without
//! them for the moment the witnesses take to answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::http::{WitnessClient, WitnessClientError};
use crate::writer::LogWriter;

/// How a [`Sequencer`] batches and whom it asks to cosign.
#[derive(Clone, Debug)]
pub struct SequencerConfig {
    /// The longest an entry waits for its checkpoint.
    pub interval: Duration,
    /// Publish early once this many entries are waiting.
    pub max_batch: usize,
    /// Witnesses to submit each checkpoint to.
    pub witnesses: Vec<WitnessClient>,
    /// How many of them verifiers require; a checkpoint that gets fewer
    /// cosignatures is still published, with a warning.
    pub quorum: usize,
}

impl Default for SequencerConfig {
    fn default() -> SequencerConfig {
        SequencerConfig {
            interval: Duration::from_secs(1),
            max_batch: 65_536,
            witnesses: Vec::new(),
            quorum: 0,
        }
    }
}

/// Why an append did not make it into the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SequencerError {
    /// The entry is invalid (too large).
    #[error("{0}")]
    Rejected(String),
    /// Publishing failed; the sequencer has stopped and the log must be
    /// reopened (the directory still holds the last good checkpoint).
    #[error("the log could not publish a checkpoint: {0}")]
    Publish(String),
    /// The sequencer is no longer running.
    #[error("the log sequencer has stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<u64, SequencerError>>;

/// A handle to a running sequencer; cheap to clone.
#[derive(Clone, Debug)]
pub struct Sequencer {
    tx: mpsc::Sender<(Vec<u8>, Reply)>,
    close: Arc<Notify>,
}

impl Sequencer {
    /// Starts the sequencer task on the current tokio runtime. It runs
    /// until [`close`](Self::close) is called or every handle is dropped
    /// (publishing what is queued either way), or a publish fails.
    pub fn spawn(writer: LogWriter, config: SequencerConfig) -> (Sequencer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.max_batch.max(1));
        let close = Arc::new(Notify::new());
        let task = tokio::spawn(run(writer, config, rx, close.clone()));
        (Sequencer { tx, close }, task)
    }

    /// Stops the sequencer, even while other handles exist: appends already
    /// sent are published and answered, later ones fail with
    /// [`SequencerError::Stopped`]. Await the task's handle to know it is
    /// done.
    pub fn close(&self) {
        self.close.notify_one();
    }

    /// Appends an entry; returns its index once it is in a published
    /// checkpoint.
    pub async fn append(&self, entry: Vec<u8>) -> Result<u64, SequencerError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send((entry, reply))
            .await
            .map_err(|_| SequencerError::Stopped)?;
        wait.await.map_err(|_| SequencerError::Stopped)?
    }
}

async fn run(
    mut writer: LogWriter,
    config: SequencerConfig,
    mut rx: mpsc::Receiver<(Vec<u8>, Reply)>,
    close: Arc<Notify>,
) {
    let mut witness_sizes = vec![0u64; config.witnesses.len()];
    let mut waiting: Vec<(u64, Reply)> = Vec::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            msg = rx.recv(), if open => match msg {
                Some((entry, reply)) => match writer.append(entry) {
                    Ok(index) => {
                        waiting.push((index, reply));
                        if waiting.len() < config.max_batch {
                            continue;
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(SequencerError::Rejected(e.to_string())));
                        continue;
                    }
                },
                None => open = false,
            },
            // What is already queued is still received, then `recv` ends.
            () = close.notified(), if open => rx.close(),
            _ = tick.tick() => {}
        }
        if waiting.is_empty() {
            continue;
        }
        // Publishing hashes and fsyncs: keep it off the async workers.
        let (back, result) = tokio::task::spawn_blocking(move || {
            let r = writer.publish();
            (writer, r)
        })
        .await
        .expect("the publish task does not panic");
        writer = back;
        match result {
            Ok(_) => {
                for (index, reply) in waiting.drain(..) {
                    let _ = reply.send(Ok(index));
                }
                cosign(&mut writer, &config, &mut witness_sizes).await;
            }
            Err(e) => {
                tracing::error!("the transparency log stopped: {e}");
                let err = SequencerError::Publish(e.to_string());
                for (_, reply) in waiting.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
                return;
            }
        }
    }
}

/// Submits the latest checkpoint to every witness, retrying once from the
/// size a witness says it holds, and adds the cosignatures it gets.
async fn cosign(writer: &mut LogWriter, config: &SequencerConfig, sizes: &mut [u64]) {
    let size = writer.size();
    let checkpoint = writer.checkpoint().to_string();
    let mut sigs = Vec::new();
    let mut cosigners = 0;
    for (w, known) in config.witnesses.iter().zip(sizes.iter_mut()) {
        for _ in 0..2 {
            let proof = if *known == 0 {
                Vec::new()
            } else {
                match writer.consistency_proof(*known, size) {
                    Ok(p) => p,
                    Err(_) => break,
                }
            };
            match w.add_checkpoint(*known, proof, &checkpoint).await {
                Ok(s) => {
                    *known = size;
                    sigs.extend(s);
                    cosigners += 1;
                    break;
                }
                Err(WitnessClientError::Conflict(theirs)) if theirs <= size => *known = theirs,
                Err(e) => {
                    tracing::warn!(
                        witness = w.key().name(),
                        url = w.url(),
                        size,
                        "the witness did not cosign the log's checkpoint: {e}"
                    );
                    break;
                }
            }
        }
    }
    if !sigs.is_empty() {
        // A checkpoint without cosignatures is still valid; a failed
        // rewrite leaves the signed one in place.
        if let Err(e) = writer.add_cosignatures(sigs) {
            tracing::warn!("cannot add cosignatures to the checkpoint: {e}");
        }
    }
    if cosigners < config.quorum {
        tracing::warn!(
            size,
            cosigners,
            quorum = config.quorum,
            "the log's checkpoint has fewer witness cosignatures than the quorum; \
             verifiers that require it will reject the checkpoint until the \
             witnesses cosign a later one"
        );
    }
}
