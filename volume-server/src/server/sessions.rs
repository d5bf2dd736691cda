//! The session table: starting sessions (FUSE mounts, 9P attaches),
//! committing them, ending them (commit, then remove), reaping those
//! unmounted from outside, and committing what a dead server left.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use layerfs::cowfs::{CowFs, MountConfig};
use layerfs::fuse::{mount, FuseOptions, FuseSession};
use serde::{Deserialize, Serialize};
use snapshotter::volume_api::{CommitResult, ReloadResult, SessionInfo};

use super::*;
use crate::session::Session;

/// What `HOME/sessions/ID/session.json` records of a session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub volume: String,
    /// Where it is FUSE-mounted (a FUSE session).
    #[serde(default)]
    pub mountpoint: Option<PathBuf>,
    /// The 9P listener it came from (a 9P session).
    #[serde(default)]
    pub listen: Option<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// A read-only view of this commit (by sequence number) rather than
    /// a session over the head.
    #[serde(default)]
    pub commit: Option<u64>,
}

/// A session the server holds.
pub(super) struct Live {
    pub(super) record: SessionRecord,
    pub(super) session: Arc<Session>,
    pub(super) fuse: Option<FuseSession>,
    /// The device number its mount point shows while FUSE-mounted.
    pub(super) dev: Option<u64>,
    /// Its teardown began and failed: it is kept, and tried again.
    pub(super) ending: bool,
    pub(super) commit_error: Option<String>,
}

/// Most bytes a session may write when its volume has no quota.
const NO_QUOTA: u64 = 1 << 50;
/// Inodes a session may make: volumes have no inode limit but the disk.
const NO_INODE_LIMIT: u64 = 1 << 40;

impl VolumeServer {
    fn mount_config(&self, id: &str, volume: &str) -> anyhow::Result<MountConfig> {
        let quota = self.volumes.head(volume)?.commit.record.quota_bytes;
        Ok(MountConfig {
            upper_dir: self.session_dir(id).join("upper"),
            quota_bytes: if quota == 0 { NO_QUOTA } else { quota },
            inode_quota: NO_INODE_LIMIT,
        })
    }

    /// Starts a session of `volume`: its record made durable first, then
    /// the copy-on-write layer over the head. On failure nothing is left.
    pub(super) fn open_session(
        &self,
        volume: &str,
        mountpoint: Option<PathBuf>,
        listen: Option<String>,
        commit: Option<u64>,
    ) -> anyhow::Result<(SessionRecord, Arc<Session>)> {
        if self.stopping.load(Ordering::SeqCst) {
            bail!("the volume server is stopping");
        }
        self.volumes.head(volume)?;
        self.settle(volume);
        let view = match commit {
            Some(seq) => Some(
                self.volumes
                    .history(volume, usize::MAX)?
                    .into_iter()
                    .find(|c| c.record.seq == seq)
                    .ok_or(crate::Error::NoSuchCommit(volume.into(), seq))?
                    .tree,
            ),
            None => None,
        };
        let id = self.new_id();
        let record = SessionRecord {
            id: id.clone(),
            volume: volume.into(),
            mountpoint,
            listen,
            created: unix_now(),
            commit,
        };
        let dir = self.session_dir(&id);
        let started = (|| {
            snapshotter::home::make_durable_dir(&dir)?;
            write_durably(
                &dir.join("session.json"),
                &serde_json::to_vec_pretty(&record)?,
            )?;
            let config = self.mount_config(&id, volume)?;
            Ok::<_, anyhow::Error>(match view {
                Some(tree) => Session::open_at(self.volumes.clone(), volume, &id, config, tree)?
                    .into_read_only(),
                None => Session::open(self.volumes.clone(), volume, &id, config)?,
            })
        })();
        match started {
            Ok(session) => Ok((record, Arc::new(session))),
            Err(e) => {
                self.discard(&id);
                Err(e)
            }
        }
    }

    /// Removes a session that holds nothing (never started, or ended
    /// and committed): its refs and its directory.
    pub(super) fn discard(&self, id: &str) {
        if let Err(e) = Session::forget(self.volumes.store(), id) {
            tracing::warn!(session = id, "removing the session's refs: {e}");
        }
        let dir = self.session_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(session = id, "removing {}: {e}", dir.display());
            }
        }
    }

    /// `volume.mount`: a session FUSE-mounted at `mountpoint`.
    pub(super) fn mount_session(
        &self,
        volume: &str,
        mountpoint: PathBuf,
        commit: Option<u64>,
    ) -> anyhow::Result<SessionInfo> {
        if !mountpoint.is_absolute() {
            return Err(snapshotter::exit::InvalidInput(format!(
                "the mount point must be an absolute path, not {}",
                mountpoint.display()
            ))
            .into());
        }
        let meta = fs::metadata(&mountpoint)
            .with_context(|| format!("mount point {}", mountpoint.display()))?;
        if !meta.is_dir() {
            return Err(snapshotter::exit::InvalidInput(format!(
                "mount point {} is not a directory",
                mountpoint.display()
            ))
            .into());
        }
        if let Some(other) = self.find(&mountpoint.display().to_string()) {
            return Err(snapshotter::exit::InvalidInput(format!(
                "{} already serves session {other}; unmount it first",
                mountpoint.display()
            ))
            .into());
        }
        let (record, session) =
            self.open_session(volume, Some(mountpoint.clone()), None, commit)?;
        let options = FuseOptions {
            fs_name: format!("strata-volume:{volume}"),
            read_only: commit.is_some(),
            ..FuseOptions::default()
        };
        let fuse = match mount(session.fs().clone(), &mountpoint, &options) {
            Ok(fuse) => fuse,
            Err(e) => {
                self.discard(&record.id);
                return Err(anyhow!(e).context(format!(
                    "mounting on {} (is FUSE available?)",
                    mountpoint.display()
                )));
            }
        };
        let dev = fs::metadata(&mountpoint).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.dev()
        });
        let live = Live {
            record,
            session,
            fuse: Some(fuse),
            dev,
            ending: false,
            commit_error: None,
        };
        let info = Self::session_info(&live);
        self.sessions.lock().insert(info.id.clone(), live);
        Ok(info)
    }

    /// Registers a 9P connection's session.
    pub(super) fn add_session(&self, record: SessionRecord, session: Arc<Session>) {
        let live = Live {
            record,
            session,
            fuse: None,
            dev: None,
            ending: false,
            commit_error: None,
        };
        self.sessions.lock().insert(live.record.id.clone(), live);
    }

    pub(super) fn session_info(live: &Live) -> SessionInfo {
        SessionInfo {
            id: live.record.id.clone(),
            volume: live.record.volume.clone(),
            mountpoint: live.record.mountpoint.clone(),
            listen: live.record.listen.clone(),
            base: live.session.base().to_hex(),
            used_bytes: live.session.fs().used_bytes(),
            created: live.record.created,
            commit_error: live.commit_error.clone(),
            commit: live.record.commit,
        }
    }

    pub(super) fn list_sessions(&self) -> Vec<SessionInfo> {
        self.sessions
            .lock()
            .values()
            .map(Self::session_info)
            .collect()
    }

    /// The session whose id or mount point is `key`.
    pub(super) fn find(&self, key: &str) -> Option<String> {
        let sessions = self.sessions.lock();
        if sessions.contains_key(key) {
            return Some(key.to_string());
        }
        let path = Path::new(key);
        sessions
            .values()
            .find(|l| l.record.mountpoint.as_deref() == Some(path))
            .map(|l| l.record.id.clone())
    }

    /// Live session `id`.
    fn live_session(&self, id: &str) -> anyhow::Result<Arc<Session>> {
        self.sessions
            .lock()
            .get(id)
            .map(|l| l.session.clone())
            .ok_or_else(|| not_found(format!("no session '{id}'")))
    }

    /// Commits session `id` now.
    pub(super) fn commit_session(&self, id: &str) -> anyhow::Result<CommitResult> {
        let session = self.live_session(id)?;
        let result = session.commit();
        let error = result.as_ref().err().map(|e| e.to_string());
        if let Some(live) = self.sessions.lock().get_mut(id) {
            live.commit_error = error;
        }
        let committed = result.with_context(|| format!("committing session {id}"))?;
        if committed.wrote {
            self.nudge_sync();
        }
        Ok(rpc::commit_result(&session, &committed))
    }

    /// Moves session `id` onto its volume's newest head
    /// ([`Session::reload`]); a FUSE mount's kernel caches of what
    /// changed are dropped.
    pub(super) fn reload_session(&self, id: &str) -> anyhow::Result<ReloadResult> {
        let session = self.live_session(id)?;
        let reloaded = session
            .reload()
            .with_context(|| format!("reloading session {id}"))?;
        // After the mount is running again: the kernel may have to call
        // into it to drop an entry.
        if let Some(fuse) = self.sessions.lock().get(id).and_then(|l| l.fuse.as_ref()) {
            let rebased = &reloaded.rebased;
            for (parent, name) in &rebased.invalidate_entries {
                layerfs::fuse::invalidate_entry(fuse, *parent, name);
            }
            for ino in &rebased.invalidate_inodes {
                layerfs::fuse::invalidate_inode(fuse, *ino);
            }
        }
        Ok(ReloadResult {
            session: id.into(),
            volume: session.volume().into(),
            head: rpc::commit_info(&reloaded.head.commit),
            conflicts: reloaded.conflicts.iter().map(rpc::conflict_info).collect(),
            entries_changed: reloaded.rebased.entries_changed,
            dirs_compared: reloaded.rebased.dirs_compared,
        })
    }

    /// Commits every session (the background commit); failures are kept
    /// on the session and logged. Sessions whose teardown failed are
    /// ended again.
    pub(super) fn autocommit(&self) {
        let ids: Vec<(String, bool)> = self
            .sessions
            .lock()
            .values()
            .map(|l| (l.record.id.clone(), l.ending))
            .collect();
        for (id, ending) in ids {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let result = if ending {
                self.end_session(&id, false).map(|_| ())
            } else {
                self.commit_session(&id).map(|_| ())
            };
            if let Err(e) = result {
                tracing::warn!(session = id, "background commit: {e:#}");
            }
        }
    }

    /// Ends session `id`: unmounts it if it is FUSE-mounted (`detach`:
    /// lazily, even while busy; otherwise EBUSY is an error and nothing
    /// changes), commits it and, once the commit is durable, removes it.
    /// A session whose commit fails stays (with its error) to be tried
    /// again.
    pub(super) fn end_session(&self, id: &str, detach: bool) -> anyhow::Result<CommitResult> {
        self.closing.begin();
        let result = self.end_session_inner(id, detach);
        self.closing.end();
        result
    }

    fn end_session_inner(&self, id: &str, detach: bool) -> anyhow::Result<CommitResult> {
        let mut live = {
            let mut sessions = self.sessions.lock();
            let live = sessions
                .get(id)
                .ok_or_else(|| not_found(format!("no session '{id}'")))?;
            if let (Some(mountpoint), Some(_)) = (&live.record.mountpoint, &live.fuse) {
                let unmounted = if detach {
                    snapshotter::daemon::umount(mountpoint, libc::MNT_DETACH)
                } else {
                    snapshotter::daemon::umount_patiently(mountpoint)
                };
                if let Err(e) = unmounted {
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e)
                            .with_context(|| format!("unmounting {}", mountpoint.display()));
                    }
                }
            }
            sessions.remove(id).expect("found above")
        };
        if let Some(fuse) = live.fuse.take() {
            finish_fuse(id, fuse, live.dev);
        }
        match live.session.close() {
            Ok(committed) => {
                if committed.wrote {
                    self.nudge_sync();
                }
                let result = rpc::commit_result(&live.session, &committed);
                self.discard(id);
                tracing::info!(
                    session = id,
                    volume = live.record.volume,
                    seq = committed.head.commit.record.seq,
                    "session ended and committed"
                );
                Ok(result)
            }
            Err(e) => {
                let message = format!("{e}");
                tracing::error!(
                    session = id,
                    "committing the ending session failed ({message}); its upper layer is \
                     kept in {} and the commit is tried again",
                    self.session_dir(id).display()
                );
                live.ending = true;
                live.commit_error = Some(message);
                self.sessions.lock().insert(id.to_string(), live);
                Err(anyhow!(e).context(format!("committing session {id}")))
            }
        }
    }

    /// Ends, in the background, FUSE sessions unmounted from outside.
    pub(super) fn reap(&self) {
        let ended: Vec<(String, FuseSession)> = self
            .sessions
            .lock()
            .values_mut()
            .filter(|l| l.fuse.as_ref().is_some_and(|f| f.is_finished()))
            .filter_map(|l| Some((l.record.id.clone(), l.fuse.take()?)))
            .collect();
        for (id, fuse) in ended {
            let _ = fuse.join();
            tracing::info!(session = id, "unmounted from outside; committing it");
            self.end_in_background(id);
        }
    }

    /// Waits until every session of `volume` that has ended from outside
    /// is committed: FUSE mounts unmounted from outside are ended now, and
    /// 9P connections whose client hung up (killed, say) are waited for
    /// until their last request is done and their sessions are
    /// committed. Whoever then reads the volume or starts a session sees
    /// what those sessions wrote — no one has to wait after a teardown.
    pub(super) fn settle(&self, volume: &str) {
        let deadline = std::time::Instant::now() + SETTLE_LIMIT;
        loop {
            let unmounted: Vec<(String, FuseSession, Option<u64>)> = self
                .sessions
                .lock()
                .values_mut()
                .filter(|l| l.record.volume == volume && is_unmounted(l))
                .filter_map(|l| Some((l.record.id.clone(), l.fuse.take()?, l.dev)))
                .collect();
            for (id, fuse, dev) in unmounted {
                finish_fuse(&id, fuse, dev);
                if let Err(e) = self.end_session(&id, true) {
                    tracing::error!(session = id, "{e:#}");
                }
            }
            let hung_up = self
                .live_connections
                .lock()
                .iter()
                .filter_map(Weak::upgrade)
                .any(|c| c.serves(volume) && c.peer_gone());
            if !hung_up && *self.closing.count.lock() == 0 {
                return;
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(
                    volume,
                    "sessions still ending after {} s; going on without them",
                    SETTLE_LIMIT.as_secs()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Ends session `id` on a thread of its own (a stopping server waits
    /// for it).
    pub(super) fn end_in_background(&self, id: String) {
        let server = self.me();
        self.closing.begin();
        let spawned = std::thread::Builder::new()
            .name("end-session".into())
            .spawn(move || {
                if let Err(e) = server.end_session(&id, true) {
                    tracing::error!(session = id, "{e:#}");
                }
                server.closing.end();
            });
        if let Err(e) = spawned {
            tracing::error!("no thread to end a session: {e}");
            self.closing.end();
        }
    }

    /// Commits what the previous server left: each session with a
    /// journal is recovered (everything the sandbox fsync'd) and ended;
    /// a session that never made anything durable is removed. A session
    /// that cannot be committed is kept and tried again.
    pub(super) fn recover(&self) -> anyhow::Result<()> {
        let dir = self.sessions_dir();
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            if let Some(id) = entry.file_name().to_str() {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        for id in ids {
            let path = self.session_dir(&id).join("session.json");
            let record = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<SessionRecord>(&b).ok());
            let Some(record) = record else {
                tracing::warn!(session = id, "discarding a half-made session");
                self.discard(&id);
                continue;
            };
            if let Some(mountpoint) = &record.mountpoint {
                // A FUSE mount whose server died answers ENOTCONN (or
                // ECONNABORTED, or ECANCELED: see `server_gone`).
                if let Err(e) = fs::metadata(mountpoint) {
                    if layerfs::fuse::server_gone(&e) {
                        let _ = snapshotter::daemon::umount(mountpoint, libc::MNT_DETACH);
                    }
                }
            }
            let upper = self.session_dir(&id).join("upper");
            if !upper.join("journal").exists() {
                self.discard(&id);
                continue;
            }
            let recovered = self.mount_config(&id, &record.volume).and_then(|config| {
                Ok(Session::recover(
                    self.volumes.clone(),
                    &record.volume,
                    &id,
                    config,
                )?)
            });
            let session = match recovered {
                Ok(session) if record.commit.is_some() => Arc::new(session.into_read_only()),
                Ok(session) => Arc::new(session),
                Err(e) => {
                    tracing::error!(
                        session = id,
                        "could not recover the session: {e:#}; its upper layer stays in {} \
                         and the next start tries again",
                        upper.display()
                    );
                    continue;
                }
            };
            self.sessions.lock().insert(
                id.clone(),
                Live {
                    record: SessionRecord {
                        mountpoint: None,
                        ..record
                    },
                    session,
                    fuse: None,
                    dev: None,
                    ending: true,
                    commit_error: None,
                },
            );
            match self.end_session(&id, true) {
                Ok(done) => tracing::info!(
                    session = id,
                    volume = done.volume,
                    seq = done.head.seq,
                    "committed the session the previous server left"
                ),
                Err(e) => tracing::error!(session = id, "{e:#}"),
            }
        }
        Ok(())
    }

    /// Whether volume `name` has sessions.
    pub(super) fn has_sessions(&self, name: &str) -> bool {
        self.sessions
            .lock()
            .values()
            .any(|l| l.record.volume == name)
    }

    /// Sessions of volume `name`, by id.
    pub(super) fn sessions_of(&self, name: &str) -> Vec<String> {
        self.sessions
            .lock()
            .values()
            .filter(|l| l.record.volume == name)
            .map(|l| l.record.id.clone())
            .collect()
    }

    /// A session's filesystem (for its 9P connection).
    #[allow(dead_code)]
    pub(super) fn fs_of(&self, id: &str) -> Option<Arc<CowFs>> {
        self.sessions.lock().get(id).map(|l| l.session.fs().clone())
    }
}

/// Longest [`VolumeServer::settle`] waits for ending sessions.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// Whether a FUSE session's mount is gone (unmounted from outside).
/// How long a FUSE mount that is gone from its mount point but still used
/// (a process's working directory or open file in a lazily detached
/// mount) may go on serving before its connection is aborted.
const DETACH_GRACE: Duration = Duration::from_secs(2);

/// Waits for a FUSE session's thread to end once its mount went: the
/// kernel ends the connection when nothing uses the mount any more. A
/// detached mount a process still uses would keep it serving for as long
/// as that process lives, and the teardown waiting with it: past
/// [`DETACH_GRACE`] the connection is aborted through fusectl (the process
/// then gets ENOTCONN; what it wrote before is committed). Never blocks
/// for long: a thread that still does not end is left to end by itself.
fn finish_fuse(id: &str, fuse: FuseSession, dev: Option<u64>) {
    let ended_within = |limit: Duration| {
        let deadline = std::time::Instant::now() + limit;
        while !fuse.is_finished() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    };
    if !ended_within(DETACH_GRACE) {
        match dev.filter(|&dev| libc::major(dev) == 0) {
            // A FUSE connection's fusectl directory is named by its
            // anonymous device's minor number.
            Some(dev) => {
                let abort = format!("/sys/fs/fuse/connections/{}/abort", libc::minor(dev));
                tracing::warn!(
                    session = id,
                    "its mount is gone but still in use; aborting the FUSE connection"
                );
                if let Err(e) = fs::write(&abort, "1") {
                    tracing::warn!(session = id, "writing {abort}: {e}");
                }
            }
            None => tracing::warn!(session = id, "its mount is gone but still in use"),
        }
        if !ended_within(Duration::from_secs(10)) {
            tracing::warn!(
                session = id,
                "its FUSE thread goes on; committing without it"
            );
            std::thread::spawn(move || drop(fuse.join()));
            return;
        }
    }
    let _ = fuse.join();
}

fn is_unmounted(live: &Live) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Some(fuse), Some(mountpoint)) = (&live.fuse, &live.record.mountpoint) else {
        return false;
    };
    if fuse.is_finished() {
        return true;
    }
    match fs::metadata(mountpoint) {
        Ok(meta) => live.dev.is_some_and(|dev| dev != meta.dev()),
        Err(_) => true,
    }
}

/// A not-found error (exit code 3).
pub(super) fn not_found(message: String) -> anyhow::Error {
    anyhow!(std::io::Error::new(std::io::ErrorKind::NotFound, message))
}

/// Whether `e` is [`not_found`]'s error.
pub(super) fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}
