//! Snapshot calls on live mounts: filesystem and directory snapshots,
//! grafting a snapshot into a mount, forking mounts from a snapshot.

use super::*;

impl Daemon {
    /// For a mount made from a capture: once its snapshot is stored, its
    /// ref and record name the snapshot's tree (its journal replays over
    /// that tree after a crash).
    pub(super) fn adopt_tree_when_stored(&self, mount: &str, snapshot: &str) {
        let Some(daemon) = self.me.get().cloned() else {
            return;
        };
        let (id, snapshot) = (mount.to_string(), snapshot.to_string());
        let mount = id.clone();
        let spawned = std::thread::Builder::new()
            .name("adopt".into())
            .spawn(move || {
                let Some(daemon) = daemon.upgrade() else {
                    return;
                };
                let tree = match daemon.catalog.tree_of(&snapshot) {
                    Ok((tree, _)) => tree,
                    Err(e) => {
                        tracing::error!(
                            mount,
                            "the snapshot this mount was made from was not stored ({e:#}); \
                             the mount works but would not survive a daemon crash"
                        );
                        return;
                    }
                };
                let mut mounts = daemon.mounts.lock();
                let Some(live) = mounts.get_mut(&mount) else {
                    return;
                };
                let result = daemon
                    .store
                    .set_ref(
                        &format!("{MOUNT_REF_PREFIX}{mount}"),
                        tree,
                        RefExpectation::Any,
                    )
                    .map_err(anyhow::Error::from)
                    .and_then(|_| {
                        live.info.tree = tree.to_hex();
                        daemon.write_record(&live.info)
                    });
                if let Err(e) = result {
                    tracing::error!(mount, "recording the mount's tree: {e:#}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!(mount = id, "starting a thread: {e}");
        }
    }

    pub(super) fn snapshot_create(&self, args: SnapshotCreate) -> anyhow::Result<SnapshotInfo> {
        super::check_labels(&args.labels)?;
        let dir = match &args.dir {
            Some(dir) => {
                let trimmed = dir.trim_matches('/');
                if trimmed.split('/').any(|p| p == ".." || p == ".") {
                    bail!("the directory to snapshot must be a plain path inside the mount, not '{dir}'");
                }
                Some(trimmed.to_string())
            }
            None => None,
        };
        let (fs, mount, parent, image) = {
            let mounts = self.mounts.lock();
            let id = Self::find_mount_or_not_found(&mounts, &args.mount)?;
            let live = &mounts[&id];
            let parent = match (&live.last_snapshot, &live.info.snapshot) {
                (Some(last), _) if dir.is_none() => last.clone(),
                (_, Some(origin)) => format!("snapshot:{origin}"),
                _ => format!("image:{}", live.info.image),
            };
            (live.fs.clone(), id, parent, live.info.image.clone())
        };
        let created = now_secs();
        let expires = match args.expire_secs {
            None => None,
            Some(secs) if secs > MAX_EXPIRE_SECS => {
                return Err(crate::exit::InvalidInput(format!(
                    "--expire may be at most {} days (got {secs} s); leave it out to keep \
                     the snapshot until it is removed",
                    MAX_EXPIRE_SECS / 86400
                ))
                .into())
            }
            Some(secs) => Some(created as u64 + secs),
        };
        let info = SnapshotInfo {
            id: self.new_id(),
            kind: if dir.is_some() {
                "directory"
            } else {
                "filesystem"
            }
            .into(),
            mount: mount.clone(),
            path: dir.clone(),
            parent,
            image,
            created,
            labels: args.labels,
            expires,
            state: SnapshotState::Converting,
            error: None,
            tree: None,
            changed_bytes: 0,
            changed_files: 0,
            new_bytes: 0,
            call_ms: 0.0,
            durable_ms: None,
            total_bytes: None,
            memory: None,
        };
        let id = info.id.clone();
        let dir_bytes = dir.unwrap_or_default();
        // Snapshots of one mount are taken one at a time, in order.
        let guard = self.snapshot_lock.lock();
        let taken = self.catalog.take(info, fs, dir_bytes.as_bytes(), false)?;
        if taken.path.is_none() {
            if let Some(live) = self.mounts.lock().get_mut(&mount) {
                live.last_snapshot = Some(id.clone());
            }
        }
        drop(guard);
        if args.wait_durable {
            return self.catalog.wait(&id);
        }
        Ok(taken)
    }

    /// Places snapshot `snapshot`'s tree at `path` in live mount `key`
    /// (copy-on-write: the snapshot never changes).
    pub(super) fn graft(&self, key: &str, snapshot: &str, path: &str) -> anyhow::Result<MountInfo> {
        let trimmed = path.trim_matches('/');
        if trimmed.is_empty()
            || trimmed
                .split('/')
                .any(|p| p == ".." || p == "." || p.is_empty())
        {
            bail!("the graft path must be a plain path inside the mount, not '{path}'");
        }
        let (tree, _) = self.catalog.tree_of(snapshot)?;
        let mounts = self.mounts.lock();
        let id = Self::find_mount_or_not_found(&mounts, key)?;
        let live = &mounts[&id];
        if !self.catalog.add_graft(&id, tree)? {
            return Err(crate::exit::InvalidInput(format!(
                "mount {id} already keeps as many trees alive as it may; \
                 take a filesystem snapshot of it first"
            ))
            .into());
        }
        let (parent, _) = live.fs.graft(trimmed.as_bytes(), tree).map_err(|e| {
            anyhow!(std::io::Error::from_raw_os_error(e.0))
                .context(format!("placing snapshot {snapshot} at /{trimmed}"))
        })?;
        if let Some(session) = &live.session {
            let name = trimmed.rsplit('/').next().unwrap_or(trimmed);
            layerfs::fuse::invalidate_entry(session, parent, name.as_bytes());
        }
        Ok(MountInfo {
            used_bytes: live.fs.used_bytes(),
            inodes_made: live.fs.inodes_made(),
            ..live.info.clone()
        })
    }

    /// Mounts `count` copies of a snapshot at `under/ID-N`; all or none.
    pub(super) fn fork(&self, args: SnapshotFork) -> anyhow::Result<Vec<MountInfo>> {
        check_threads(args.threads)?;
        if !args.under.is_absolute() {
            bail!("the fork directory must be an absolute path");
        }
        if args.count == 0 || args.count > 10_000 {
            bail!("--count must be between 1 and 10000");
        }
        // A memory snapshot forks as mounts of its files (each built by
        // mount_start); any other must have a tree.
        if self.catalog.get(&args.id)?.memory.is_none() {
            self.catalog.tree_of(&args.id)?;
        }
        let mut made: Vec<MountInfo> = Vec::new();
        for n in 0..args.count {
            let mountpoint = args.under.join(format!("{}-{n}", args.id));
            let result = fs::create_dir_all(&mountpoint)
                .with_context(|| format!("creating {}", mountpoint.display()))
                .and_then(|()| {
                    self.mount_start(MountCreate {
                        image: String::new(),
                        snapshot: Some(args.id.clone()),
                        mountpoint: Some(mountpoint.clone()),
                        quota_bytes: args.quota_bytes,
                        inode_quota: args.inode_quota,
                        threads: args.threads,
                    })
                });
            match result {
                Ok(info) => made.push(info),
                Err(e) => {
                    for info in &made {
                        let _ = self.mount_remove(&info.id);
                    }
                    return Err(e).with_context(|| format!("fork {n} of {}", args.count));
                }
            }
        }
        // One sync makes every new mount's name durable.
        if let Err(e) = self.sync_mounts_dir() {
            for info in &made {
                let _ = self.mount_remove(&info.id);
            }
            return Err(e);
        }
        Ok(made)
    }
}
