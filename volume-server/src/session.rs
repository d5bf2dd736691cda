//! A session: one sandbox's copy-on-write view of a volume, and its
//! commits.
//!
//! A session is a [`CowFs`] mount over the head the session started from,
//! with its own upper layer (and its journal: an fsync'd write is durable
//! in the session before fsync returns). [`Session::commit`] captures the
//! mount (sealing changed files; the sandbox goes on at once), stores the
//! capture as a tree and merges it into the volume's head
//! ([`Volumes::commit`]). The stored capture becomes the session's new
//! base, so that the next commit carries only what changed since.
//!
//! The base is kept alive in the store by the ref `volsession/ID` (and
//! the tree the mount started on by `vollower/ID`) for as long as the
//! session lives (the merged head need not contain it: a
//! conflict or a concurrent delete changes it), so GC never takes what
//! the next merge must read. [`Session::close`] commits and then lets it
//! go; a session whose commit fails keeps its upper layer and its ref.

use std::sync::Arc;

use cas::{ChunkId, RefExpectation};
use layerfs::cowfs::{CowFs, MountConfig};
use parking_lot::Mutex;

use crate::catalog::{validate_name, Committed, Volumes};
use crate::{Error, Result};

/// Ref prefix of live sessions' bases.
pub const SESSION_REF_PREFIX: &str = "volsession/";
/// Ref prefix of live sessions' lower trees (the head each started on).
pub const LOWER_REF_PREFIX: &str = "vollower/";

/// One sandbox's view of a volume.
pub struct Session {
    volumes: Arc<Volumes>,
    volume: String,
    id: String,
    fs: Arc<CowFs>,
    /// The tree the session's changes are relative to; held while a
    /// commit runs, so that commits of one session go one at a time.
    base: Mutex<ChunkId>,
}

impl Session {
    /// Starts session `id` (letters, digits, `-`, `_`) on volume `volume`'s
    /// head, its upper layer in `config.upper_dir`.
    pub fn open(
        volumes: Arc<Volumes>,
        volume: &str,
        id: &str,
        config: MountConfig,
    ) -> Result<Session> {
        validate_name(id).map_err(|_| Error::BadSession(id.into()))?;
        let head = volumes.head(volume)?;
        let base = head.commit.tree;
        let store = volumes.store().clone();
        // The mount reads its lower tree for its whole life; its base moves.
        store.set_ref(&lower_ref(id), base, RefExpectation::Any)?;
        store.set_ref(&session_ref(id), base, RefExpectation::Any)?;
        let fs = CowFs::new(store, base, config)?;
        Ok(Session::running(volumes, volume, id, fs, base))
    }

    /// Reopens session `id` of volume `volume` after the server stopped
    /// without closing it (a crash, a kill): its upper layer in
    /// `config.upper_dir` is recovered from its journal — everything the
    /// sandbox fsync'd is there — over the tree the session started on,
    /// and its base is the one its last commit left. Commit or close it to
    /// bring what it holds into the volume.
    pub fn recover(
        volumes: Arc<Volumes>,
        volume: &str,
        id: &str,
        config: MountConfig,
    ) -> Result<Session> {
        validate_name(id).map_err(|_| Error::BadSession(id.into()))?;
        volumes.head(volume)?;
        let store = volumes.store().clone();
        let found = |name: String| -> Result<ChunkId> {
            match store.get_ref(&name)? {
                Some(value) => Ok(value.root),
                None => Err(Error::Session(format!(
                    "no session '{id}' to recover ({name} is missing)"
                ))),
            }
        };
        let lower = found(lower_ref(id))?;
        let base = found(session_ref(id))?;
        let (fs, report) = CowFs::recover(store, lower, config)?;
        tracing::info!(session = id, volume, ?report, "volume session recovered");
        Ok(Session::running(volumes, volume, id, fs, base))
    }

    fn running(volumes: Arc<Volumes>, volume: &str, id: &str, fs: CowFs, base: ChunkId) -> Session {
        Session {
            volumes,
            volume: volume.into(),
            id: id.into(),
            fs: Arc::new(fs),
            base: Mutex::new(base),
        }
    }

    /// The mount the sandbox works in.
    pub fn fs(&self) -> &Arc<CowFs> {
        &self.fs
    }

    /// The session's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The tree the session's uncommitted changes are relative to.
    pub fn base(&self) -> ChunkId {
        *self.base.lock()
    }

    /// Merges everything the session changed since its last commit into
    /// the volume's head; returns once the new head is durable.
    pub fn commit(&self) -> Result<Committed> {
        let mut base = self.base.lock();
        let store = self.volumes.store();
        let capture = self
            .fs
            .capture(b"")
            .map_err(|e| Error::Session(format!("capturing the session: errno {}", e.0)))?;
        let writer = store.writer("volume session");
        let stored = capture.store(store, &writer)?;
        writer.commit()?;
        let ours = stored.tree;
        // The stored capture is the next base: keep it before anything
        // can collect it.
        writer.set_ref(&session_ref(&self.id), ours, RefExpectation::Any)?;
        let tag = conflict_tag(&self.id);
        let committed = self
            .volumes
            .commit(&self.volume, *base, ours, &self.id, &tag)?;
        // The sealed layers switch to their blobs and the directories are
        // recorded as stored (the next capture takes unchanged ones whole):
        // all of it is in `ours`, which the session's ref keeps.
        self.fs
            .converted(&stored)
            .map_err(|e| Error::Session(format!("after the commit: errno {}", e.0)))?;
        *base = ours;
        Ok(committed)
    }

    /// Ends the session: commits, then lets its base go. On error the
    /// session is left as it was (its upper layer and its ref kept) for a
    /// later attempt.
    pub fn close(self) -> Result<Committed> {
        let committed = self.commit()?;
        let store = self.volumes.store();
        for name in [session_ref(&self.id), lower_ref(&self.id)] {
            match store.delete_ref(&name, RefExpectation::Any) {
                Ok(_) | Err(cas::Error::RefNotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(committed)
    }
}

fn session_ref(id: &str) -> String {
    format!("{SESSION_REF_PREFIX}{id}")
}

fn lower_ref(id: &str) -> String {
    format!("{LOWER_REF_PREFIX}{id}")
}

/// The tag conflict copies get: when (UTC, to the second) and who.
fn conflict_tag(session: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let id: String = session
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(40)
        .collect();
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{id}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_790), (2026, 12, 3));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn conflict_tags_are_valid_names() {
        let tag = conflict_tag("s/1 weird");
        assert!(tag.ends_with("-s1weird"), "{tag}");
        assert!(tag.len() <= 64);
    }
}
