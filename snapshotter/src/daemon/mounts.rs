//! The mount table: starting, recording, recovering, finding and removing
//! mounts, and reaping those unmounted from outside.

use super::*;

/// `umount2(path, flags)`.
pub fn umount(path: &Path, flags: i32) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated path; umount2 touches no memory of ours.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A plain unmount that waits out a short-lived EBUSY (up to half a
/// second): a process forking anywhere on the machine holds copies of its
/// descriptors, some perhaps of files on this mount, until its child
/// execs. A mount still busy after that is reported busy.
pub fn umount_patiently(path: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match umount(path, 0) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Daemon {
    /// Takes over what a daemon that died left: each mount whose upper
    /// layer has a journal is recovered and mounted again at its mount
    /// point (the dead FUSE mount there is detached first); half-made
    /// mounts are discarded.
    pub(super) fn recover(&self) -> anyhow::Result<()> {
        let dir = self.home.join("mounts");
        let mut found: Vec<String> = Vec::new();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                if let Some(id) = entry.file_name().to_str() {
                    found.push(id.to_string());
                }
            }
        }
        for (name, _) in self.store.list_refs(MOUNT_REF_PREFIX)? {
            if let Some(id) = name.strip_prefix(MOUNT_REF_PREFIX) {
                found.push(id.to_string());
            }
        }
        found.sort();
        found.dedup();
        for id in found {
            let record = self.mount_dir(&id).join("mount.json");
            let info = fs::read(&record)
                .ok()
                .and_then(|b| serde_json::from_slice::<MountInfo>(&b).ok());
            let Some(info) = info else {
                tracing::warn!(mount = id, "discarding a half-made mount");
                self.discard(&id);
                continue;
            };
            // A FUSE mount whose server died answers ENOTCONN (or
            // ECONNABORTED, or ECANCELED: see `server_gone`); detach it.
            if let Some(mountpoint) = &info.mountpoint {
                if let Err(e) = fs::metadata(mountpoint) {
                    if layerfs::fuse::server_gone(&e) {
                        let _ = umount(mountpoint, libc::MNT_DETACH);
                    }
                }
            }
            match self.restore_mount(&info) {
                Ok(mut live) => {
                    live.last_snapshot = self.catalog.latest_of_mount(&id);
                    self.mounts.lock().insert(id, live);
                }
                Err(e) => tracing::error!(
                    mount = id,
                    mountpoint = %info.place(),
                    "could not restore the mount: {e:#}; its upper layer stays in {} \
                     and the next daemon start tries again",
                    info.upper.display()
                ),
            }
        }
        // Roots of mounts that no longer exist.
        for (name, _) in self.store.list_refs(MOUNT_ROOTS_REF_PREFIX)? {
            let id = name.trim_start_matches(MOUNT_ROOTS_REF_PREFIX);
            if !self.mount_dir(id).exists() {
                self.catalog.forget_mount(id);
            }
        }
        Ok(())
    }

    /// Recovers a mount's upper layer from its journal and serves it again.
    pub(super) fn restore_mount(&self, info: &MountInfo) -> anyhow::Result<LiveMount> {
        let mut info = info.clone();
        if info.tree.is_empty() {
            // Made from a snapshot being stored, not adopted yet.
            let snapshot = info.snapshot.clone().unwrap_or_default();
            let (tree, _) = match self.catalog.tree_of(&snapshot) {
                Ok(found) => found,
                Err(e) => {
                    self.discard(&info.id);
                    return Err(e.context(format!(
                        "mount {} was made from snapshot {snapshot} before it was stored, \
                         and it never was; the mount is discarded",
                        info.id
                    )));
                }
            };
            info.tree = tree.to_hex();
            self.store.set_ref(
                &format!("{MOUNT_REF_PREFIX}{}", info.id),
                tree,
                RefExpectation::Any,
            )?;
            self.write_record(&info)?;
        }
        let info = &info;
        let tree: ChunkId = info
            .tree
            .parse()
            .map_err(|e| anyhow!("mount record names a bad tree id: {e}"))?;
        let config = MountConfig {
            upper_dir: info.upper.clone(),
            quota_bytes: info.quota_bytes,
            inode_quota: info.inode_quota,
        };
        let (fs, report) = if info.upper.join("journal").exists() {
            CowFs::recover(self.store.clone(), tree, config)
                .context("replaying the upper layer's journal")?
        } else {
            // Its record is durable but nothing inside it ever was (a new
            // mount's journal costs no sync until its first fsync): it
            // comes back as it began, empty.
            match fs::remove_dir_all(&info.upper) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("clearing {}", info.upper.display()))
                }
            }
            let fs = CowFs::new(self.store.clone(), tree, config)
                .context("starting the mount's upper layer again")?;
            (fs, layerfs::cowfs::RecoveryReport::default())
        };
        let fs = Arc::new(fs);
        let options = FuseOptions {
            fs_name: format!("strata:{}", info.id),
            ..FuseOptions::default()
        };
        let session = match &info.mountpoint {
            Some(mountpoint) => Some(
                mount(fs.clone(), mountpoint, &options)
                    .with_context(|| format!("mounting on {}", mountpoint.display()))?,
            ),
            None => None,
        };
        tracing::info!(
            mount = info.id,
            mountpoint = %info.place(),
            records = report.records,
            skipped = report.skipped,
            torn_bytes = report.torn_bytes,
            "restored the mount of image '{}'",
            info.image
        );
        Ok(LiveMount {
            info: info.clone(),
            fs,
            session,
            last_snapshot: None,
        })
    }

    /// Ends mounts that were unmounted from outside (their FUSE session
    /// finished).
    pub(super) fn reap(&self) {
        let ended: Vec<LiveMount> = {
            let mut mounts = self.mounts.lock();
            let ids: Vec<String> = mounts
                .iter()
                .filter(|(_, m)| {
                    // Only FUSE mounts end from outside.
                    m.info.mountpoint.is_some()
                        && m.session.as_ref().is_none_or(|s| s.is_finished())
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| mounts.remove(id)).collect()
        };
        for mut mount in ended {
            if let Some(session) = mount.session.take() {
                let _ = session.join();
            }
            tracing::info!(mount = mount.info.id, "unmounted from outside; ending it");
            self.p9().forget_mount(&mount.info.id);
            self.discard(&mount.info.id);
        }
    }

    /// Makes a mount and makes it durable: its record and its name in
    /// `HOME/mounts` survive a power cut once this returns.
    pub(super) fn mount_create(&self, args: MountCreate) -> anyhow::Result<MountInfo> {
        let info = self.mount_start(args)?;
        if let Err(e) = self.sync_mounts_dir() {
            let _ = self.mount_remove(&info.id);
            return Err(e);
        }
        Ok(info)
    }

    /// Makes `HOME/mounts`' entries durable (the names of new mounts).
    pub(super) fn sync_mounts_dir(&self) -> anyhow::Result<()> {
        let dir = self.home.join("mounts");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))
    }

    /// Makes a mount; its name in `HOME/mounts` is not yet durable (see
    /// [`Daemon::mount_create`]).
    pub(super) fn mount_start(&self, args: MountCreate) -> anyhow::Result<MountInfo> {
        check_threads(args.threads)?;
        if let Some(mountpoint) = &args.mountpoint {
            if !mountpoint.is_absolute() {
                bail!(
                    "the mount point must be an absolute path, not {}",
                    mountpoint.display()
                );
            }
            let meta = fs::metadata(mountpoint)
                .with_context(|| format!("mount point {}", mountpoint.display()))?;
            if !meta.is_dir() {
                bail!("mount point {} is not a directory", mountpoint.display());
            }
        }
        // A memory snapshot's files (held until the mount's ref is).
        let mut _memory_tree = None;
        let (source, image) = match &args.snapshot {
            Some(id) if self.catalog.get(id).is_ok_and(|s| s.memory.is_some()) => {
                let (tree, writer) = self
                    .memory_mount_tree(id)?
                    .ok_or_else(|| anyhow!("snapshot {id} is not a memory snapshot"))?;
                _memory_tree = Some(writer);
                (MountSource::Tree(tree), String::new())
            }
            Some(id) => match self.catalog.capture_of(id).filter(|c| c.restorable()) {
                // Still being stored: mounted at once from its capture.
                Some(capture) => (
                    MountSource::Capture(id.clone(), capture),
                    self.catalog.get(id)?.image,
                ),
                None => {
                    let (tree, snapshot) = self.catalog.tree_of(id)?;
                    (MountSource::Tree(tree), snapshot.image)
                }
            },
            None => (
                MountSource::Tree(layerfs::image_tree(&self.store, &args.image)?),
                args.image.clone(),
            ),
        };
        let mut mounts = self.mounts.lock();
        if let Some(other) = mounts
            .values()
            .find(|m| m.info.mountpoint.is_some() && m.info.mountpoint == args.mountpoint)
        {
            bail!(
                "{} already serves mount {}; unmount it first",
                other.info.place(),
                other.info.id
            );
        }
        let id = self.new_id();
        let dir = self.mount_dir(&id);
        let info = MountInfo {
            id: id.clone(),
            image,
            tree: match &source {
                MountSource::Tree(tree) => tree.to_hex(),
                MountSource::Capture(..) => String::new(),
            },
            mountpoint: args.mountpoint.clone(),
            upper: dir.join("upper"),
            quota_bytes: args.quota_bytes,
            used_bytes: 0,
            inode_quota: args
                .inode_quota
                .unwrap_or(layerfs::cowfs::DEFAULT_INODE_QUOTA),
            inodes_made: 0,
            created: unix_now(),
            snapshot: args.snapshot.clone(),
        };
        let result = self.start_mount(&info, &source, args.threads);
        match result {
            Ok((fs, session)) => {
                if let MountSource::Capture(snapshot, _) = &source {
                    self.adopt_tree_when_stored(&id, snapshot);
                }
                mounts.insert(
                    id,
                    LiveMount {
                        info: info.clone(),
                        fs,
                        session,
                        last_snapshot: None,
                    },
                );
                Ok(info)
            }
            Err(e) => {
                self.discard(&id);
                Err(e)
            }
        }
    }

    /// Writes a mount's record (`mount.json`) durably.
    pub(super) fn write_record(&self, info: &MountInfo) -> anyhow::Result<()> {
        let dir = self.mount_dir(&info.id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::home::write_json_durably(&dir, "mount.json", info)
    }

    pub(super) fn start_mount(
        &self,
        info: &MountInfo,
        source: &MountSource,
        threads: Option<usize>,
    ) -> anyhow::Result<(Arc<CowFs>, Option<FuseSession>)> {
        self.write_record(info)?;
        let config = MountConfig {
            upper_dir: info.upper.clone(),
            quota_bytes: info.quota_bytes,
            inode_quota: info.inode_quota,
        };
        let fs = match source {
            MountSource::Tree(tree) => {
                self.store.set_ref(
                    &format!("{MOUNT_REF_PREFIX}{}", info.id),
                    *tree,
                    RefExpectation::Any,
                )?;
                CowFs::new(self.store.clone(), *tree, config)
            }
            MountSource::Capture(_, capture) => {
                CowFs::from_capture(self.store.clone(), capture, config)
            }
        };
        let fs =
            Arc::new(fs.with_context(|| {
                format!("preparing the upper layer in {}", info.upper.display())
            })?);
        let options = FuseOptions {
            threads: threads.unwrap_or(FuseOptions::default().threads),
            fs_name: format!("strata:{}", info.id),
            ..FuseOptions::default()
        };
        let session = match &info.mountpoint {
            Some(mountpoint) => {
                Some(mount(fs.clone(), mountpoint, &options).with_context(|| {
                    format!("mounting on {} (is FUSE available?)", mountpoint.display())
                })?)
            }
            None => None,
        };
        Ok((fs, session))
    }

    pub(super) fn mount_list(&self) -> Vec<MountInfo> {
        self.mounts
            .lock()
            .values()
            .map(|m| MountInfo {
                used_bytes: m.fs.used_bytes(),
                inodes_made: m.fs.inodes_made(),
                ..m.info.clone()
            })
            .collect()
    }

    pub(super) fn find_mount(mounts: &BTreeMap<String, LiveMount>, key: &str) -> Option<String> {
        if mounts.contains_key(key) {
            return Some(key.to_string());
        }
        let path = Path::new(key);
        mounts
            .values()
            .find(|m| m.info.mountpoint.as_deref() == Some(path))
            .map(|m| m.info.id.clone())
    }

    /// [`Daemon::find_mount`], or a not-found error naming `key`.
    pub(super) fn find_mount_or_not_found(
        mounts: &BTreeMap<String, LiveMount>,
        key: &str,
    ) -> anyhow::Result<String> {
        Self::find_mount(mounts, key).ok_or_else(|| {
            anyhow!(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no mount with id or mount point '{key}'"),
            ))
        })
    }

    /// A live mount's id and filesystem (for 9P attaches).
    pub(super) fn find_fs(&self, key: &str) -> Option<(String, Arc<CowFs>)> {
        let mounts = self.mounts.lock();
        let id = Self::find_mount(&mounts, key)?;
        let fs = mounts[&id].fs.clone();
        Some((id, fs))
    }

    pub(super) fn mount_remove(&self, key: &str) -> anyhow::Result<MountInfo> {
        let mut mount = {
            let mut mounts = self.mounts.lock();
            let id = Self::find_mount_or_not_found(&mounts, key)?;
            let mount = &mounts[&id];
            // A plain unmount: fails with EBUSY while something uses it,
            // rather than detaching a root filesystem a sandbox still runs on.
            if let Some(mountpoint) = &mount.info.mountpoint {
                if let Err(e) = umount_patiently(mountpoint) {
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        return Err(e)
                            .with_context(|| format!("unmounting {}", mountpoint.display()));
                    }
                }
            }
            mounts.remove(&id).expect("found above")
        };
        if let Some(session) = mount.session.take() {
            let _ = session.join();
        }
        let info = MountInfo {
            used_bytes: mount.fs.used_bytes(),
            inodes_made: mount.fs.inodes_made(),
            ..mount.info.clone()
        };
        drop(mount);
        self.p9().forget_mount(&info.id);
        self.discard(&info.id);
        Ok(info)
    }
}
