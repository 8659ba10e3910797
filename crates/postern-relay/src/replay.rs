//! The replay cache: every authenticator the relay accepted inside the
//! time window, so that a recorded first flight replayed by a prober is
//! sent to the cover like any other stranger's bytes.
//!
//! A hello is only accepted with a timestamp within ±`window` of the
//! relay's clock, so an entry can be forgotten once `timestamp + window`
//! has passed: after that the same hello fails the timestamp check anyway.
//! The cache survives a restart: each accepted tag is appended to a file
//! (24-byte tag, 8-byte timestamp) before the relay answers, and the file
//! is read back — and compacted — at start-up. Without a file (tests, or
//! `--replay-file none`) the relay instead refuses every timestamp older
//! than its own start plus the window, which closes the same hole at the
//! price of refusing clients for one window after a restart.
//!
//! The cache is bounded ([`ReplayCache::max_entries`]); when full, new
//! clients are refused (sent to the cover) until old entries expire, and
//! the `postern_relay_replay_cache_full_total` metric counts it. At the
//! default of a million entries that is about 80 MB in the worst case and
//! 10,000 handshakes a second for the whole minute of the window.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A tag: the authenticator's first 24 bytes.
pub type Tag = [u8; 24];

const RECORD: usize = 32;

/// What [`ReplayCache::check_and_insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: recorded now.
    Fresh,
    /// Seen before: a replay.
    Replay,
    /// Refused because the timestamp precedes what the cache can vouch
    /// for (no file, and the hello is from before the relay started).
    BeforeStart,
    /// The cache is full.
    Full,
}

struct Inner {
    tags: HashSet<Tag>,
    by_time: BTreeSet<(u64, Tag)>,
    file: Option<File>,
    records_in_file: usize,
}

/// The replay cache (see the module docs).
pub struct ReplayCache {
    inner: Mutex<Inner>,
    window: u64,
    max_entries: usize,
    path: Option<PathBuf>,
    /// Without a file: the oldest timestamp accepted.
    not_before: u64,
}

impl ReplayCache {
    /// Opens the cache, reading back `path` if it exists (entries still
    /// inside the window are kept, the file is rewritten without the
    /// others). With `path` None, hellos stamped before `now + window`
    /// are refused (see the module docs).
    pub fn open(
        path: Option<&Path>,
        window: u64,
        max_entries: usize,
        now: u64,
    ) -> io::Result<Self> {
        let mut inner = Inner {
            tags: HashSet::new(),
            by_time: BTreeSet::new(),
            file: None,
            records_in_file: 0,
        };
        if let Some(path) = path {
            let mut bytes = Vec::new();
            match File::open(path) {
                Ok(mut f) => {
                    f.read_to_end(&mut bytes)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // A torn last record (a crash mid-write) is dropped.
            for rec in bytes.chunks_exact(RECORD) {
                let mut tag = [0u8; 24];
                tag.copy_from_slice(&rec[..24]);
                let ts = u64::from_be_bytes(rec[24..].try_into().expect("8 bytes"));
                if ts.saturating_add(window) >= now && inner.tags.len() < max_entries {
                    inner.tags.insert(tag);
                    inner.by_time.insert((ts, tag));
                }
            }
            inner.file = Some(rewrite(path, &inner.by_time)?);
            inner.records_in_file = inner.by_time.len();
        }
        Ok(ReplayCache {
            inner: Mutex::new(inner),
            window,
            max_entries,
            path: path.map(Path::to_path_buf),
            not_before: if path.is_some() { 0 } else { now + window },
        })
    }

    /// The most entries kept.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// How many entries are held now.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("replay cache lock").tags.len()
    }

    /// True if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `tag` (stamped `ts`) unless it was seen before. Called only
    /// for hellos whose authenticator and timestamp already verified.
    pub fn check_and_insert(&self, tag: Tag, ts: u64, now: u64) -> Seen {
        if ts < self.not_before {
            return Seen::BeforeStart;
        }
        let mut inner = self.inner.lock().expect("replay cache lock");
        // Forget what the timestamp check rejects anyway.
        while let Some(&(old, t)) = inner.by_time.first() {
            if old.saturating_add(self.window) >= now {
                break;
            }
            inner.by_time.pop_first();
            inner.tags.remove(&t);
        }
        if inner.tags.contains(&tag) {
            return Seen::Replay;
        }
        if inner.tags.len() >= self.max_entries {
            return Seen::Full;
        }
        inner.tags.insert(tag);
        inner.by_time.insert((ts, tag));
        if let Some(file) = inner.file.as_mut() {
            let mut rec = [0u8; RECORD];
            rec[..24].copy_from_slice(&tag);
            rec[24..].copy_from_slice(&ts.to_be_bytes());
            if let Err(e) = file.write_all(&rec) {
                // Refusing the client is safer than answering it with a
                // tag that would be forgotten by a restart.
                tracing::warn!("cannot write the replay cache file: {e}");
                inner.tags.remove(&tag);
                inner.by_time.remove(&(ts, tag));
                return Seen::Full;
            }
            inner.records_in_file += 1;
            if inner.records_in_file > 2 * inner.by_time.len() + 4096
                && let Some(path) = &self.path
            {
                match rewrite(path, &inner.by_time) {
                    Ok(f) => {
                        inner.file = Some(f);
                        inner.records_in_file = inner.by_time.len();
                    }
                    Err(e) => tracing::warn!("cannot compact the replay cache file: {e}"),
                }
            }
        }
        Seen::Fresh
    }
}

/// Writes the live entries to a fresh file and swaps it in; returns it
/// opened for appending.
fn rewrite(path: &Path, entries: &BTreeSet<(u64, Tag)>) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        let mut buf = Vec::with_capacity(entries.len() * RECORD);
        for (ts, tag) in entries {
            buf.extend_from_slice(tag);
            buf.extend_from_slice(&ts.to_be_bytes());
        }
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_fresh_once_and_a_replay_after() {
        let c = ReplayCache::open(None, 30, 10, 1000).unwrap();
        // Without a file, nothing stamped before start + window.
        assert_eq!(c.check_and_insert([1; 24], 1000, 1000), Seen::BeforeStart);
        assert_eq!(c.check_and_insert([1; 24], 1031, 1031), Seen::Fresh);
        assert_eq!(c.check_and_insert([1; 24], 1031, 1040), Seen::Replay);
        // Expired entries are forgotten (the timestamp check refuses them).
        assert_eq!(c.check_and_insert([2; 24], 1100, 1100), Seen::Fresh);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_cache_survives_a_restart_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay");
        let c = ReplayCache::open(Some(&path), 30, 3, 1000).unwrap();
        for i in 0..3u8 {
            assert_eq!(c.check_and_insert([i; 24], 1000, 1000), Seen::Fresh);
        }
        assert_eq!(c.check_and_insert([9; 24], 1000, 1000), Seen::Full);
        drop(c);
        // A torn record at the end is ignored.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[7; 20])
            .unwrap();
        let c = ReplayCache::open(Some(&path), 30, 3, 1010).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.check_and_insert([1; 24], 1000, 1010), Seen::Replay);
        // After the window the old entries go, from the file too.
        let c = ReplayCache::open(Some(&path), 30, 3, 2000).unwrap();
        assert!(c.is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
