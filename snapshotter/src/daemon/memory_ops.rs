//! Memory snapshots: storing a memory image or a runtime's checkpoint
//! directory (`memsnap`'s page classes), writing one back, and serving one
//! to userfaultfd clients (Firecracker's handshake).
//!
//! A page server runs in the daemon (it reads the store), pins the
//! snapshot's root for as long as it runs (so removing the snapshot and a
//! GC never take pages from under a client), and keeps the image's working
//! set in `HOME/memory/working-sets/ROOT.json`.
//!
//! A memory snapshot can also be mounted (`snapctl mount --snapshot ID`):
//! the mount's lower tree holds the image as file `memory` (or a
//! checkpoint directory's files), read from the image as they are faulted
//! in, each mount with its own upper layer.

use std::time::Instant;

use memsnap::{PageServer, ServeOptions};

use super::*;
use crate::api::{MemGet, MemPut, MemServe, MemServerInfo, MemoryInfo};

/// A page server the daemon runs.
pub(super) struct ServedMemory {
    snapshot: String,
    file: Option<String>,
    server: PageServer,
    /// Keeps the served image alive.
    _pin: cas::Writer,
}

impl ServedMemory {
    fn info(&self) -> MemServerInfo {
        MemServerInfo {
            snapshot: self.snapshot.clone(),
            file: self.file.clone(),
            stats: self.server.stats(),
            clients: self.server.clients(),
        }
    }
}

impl Daemon {
    pub(super) fn mem_put(&self, args: MemPut) -> anyhow::Result<SnapshotInfo> {
        if !args.source.is_absolute() {
            bail!("the memory image must be given as an absolute path");
        }
        super::check_labels(&args.labels)?;
        let meta = fs::metadata(&args.source)
            .with_context(|| format!("reading {}", args.source.display()))?;
        match (args.dir, meta.is_dir()) {
            (true, false) => {
                return Err(exit::InvalidInput(format!(
                    "{} is not a directory (leave out --dir to store one image file)",
                    args.source.display()
                ))
                .into())
            }
            (false, true) => {
                return Err(exit::InvalidInput(format!(
                    "{} is a directory (store a checkpoint directory with --dir)",
                    args.source.display()
                ))
                .into())
            }
            (false, false) if !meta.is_file() => {
                return Err(exit::InvalidInput(format!(
                    "{} is not a regular file",
                    args.source.display()
                ))
                .into())
            }
            _ => {}
        }
        let parent_root = match &args.parent {
            None => None,
            Some(parent) => {
                let (root, info) = self.catalog.memory_root(parent)?;
                let parent_is_dir = info.memory.as_ref().is_some_and(|m| m.files.is_some());
                if parent_is_dir != args.dir {
                    return Err(exit::InvalidInput(format!(
                        "snapshot {parent} is {}; a parent must be of the same kind",
                        if parent_is_dir {
                            "a checkpoint directory"
                        } else {
                            "one memory image"
                        }
                    ))
                    .into());
                }
                Some(root)
            }
        };
        let created = now_secs();
        let expires = match args.expire_secs {
            None => None,
            Some(secs) if secs > MAX_EXPIRE_SECS => {
                return Err(exit::InvalidInput(format!(
                    "--expire may be at most {} days (got {secs} s)",
                    MAX_EXPIRE_SECS / 86400
                ))
                .into())
            }
            Some(secs) => Some(created as u64 + secs),
        };
        let id = self.new_id();
        let started = Instant::now();
        let writer = self.store.writer(&format!("memory snapshot {id}"));
        let captured = import_pool()
            .install(|| {
                if args.dir {
                    memsnap::capture_dir(&writer, &args.source, parent_root.as_ref())
                } else {
                    let file = File::open(&args.source).map_err(|e| memsnap::Error::Io {
                        context: format!("opening {}", args.source.display()),
                        source: e,
                    })?;
                    memsnap::capture_file(&writer, &file, parent_root.as_ref())
                }
            })
            .with_context(|| format!("storing {}", args.source.display()))?;
        let call_ms = started.elapsed().as_secs_f64() * 1e3;
        let stats = captured.stats;
        let info = SnapshotInfo {
            id,
            kind: "memory".into(),
            mount: String::new(),
            path: None,
            parent: args.parent.clone().unwrap_or_default(),
            image: String::new(),
            created,
            labels: args.labels,
            expires,
            state: SnapshotState::Durable,
            error: None,
            tree: None,
            changed_bytes: stats.pages.new * memsnap::PAGE_SIZE as u64,
            changed_files: 0,
            new_bytes: stats.stored_bytes,
            call_ms,
            durable_ms: Some(call_ms),
            total_bytes: Some(captured.size),
            memory: Some(MemoryInfo {
                root: captured.id.to_hex(),
                size: captured.size,
                files: captured.files,
                pages: stats.pages,
                stored_bytes: stats.stored_bytes,
            }),
        };
        // Durable once the record is: the catalog's write is synced.
        let mut stored = self.catalog.put_memory(info, captured.id, &writer)?;
        stored.durable_ms = Some(started.elapsed().as_secs_f64() * 1e3);
        Ok(stored)
    }

    pub(super) fn mem_get(&self, args: MemGet) -> anyhow::Result<memsnap::RestoreStats> {
        if !args.target.is_absolute() {
            bail!("the target must be an absolute path");
        }
        let (root, info) = self.catalog.memory_root(&args.id)?;
        let is_dir = info.memory.as_ref().is_some_and(|m| m.files.is_some());
        if is_dir != args.dir {
            return Err(exit::InvalidInput(if is_dir {
                format!(
                    "snapshot {} is a checkpoint directory: write it back with --dir",
                    args.id
                )
            } else {
                format!("snapshot {} is one memory image: leave out --dir", args.id)
            })
            .into());
        }
        // A writer's lease keeps the snapshot's pages while they are read,
        // whatever becomes of the snapshot meanwhile.
        let pin = self.store.writer(&format!("restore of {}", args.id));
        pin.pin(&root)?;
        let stats = import_pool()
            .install(|| memsnap::restore(&self.store, &root, &args.target))
            .with_context(|| {
                format!("writing snapshot {} to {}", args.id, args.target.display())
            })?;
        Ok(stats)
    }

    pub(super) fn mem_serve(&self, args: MemServe) -> anyhow::Result<MemServerInfo> {
        if !args.socket.is_absolute() {
            bail!("the socket must be given as an absolute path");
        }
        let (root, info) = self.catalog.memory_root(&args.id)?;
        let image = match (memsnap::root_kind(&self.store, &root)?, &args.file) {
            (memsnap::RootKind::Image, None) => root,
            (memsnap::RootKind::Image, Some(_)) => {
                return Err(exit::InvalidInput(format!(
                    "snapshot {} is one memory image; leave out --file",
                    args.id
                ))
                .into())
            }
            (memsnap::RootKind::Dir(files), Some(name)) => {
                match files.iter().find(|(f, _)| &f.path == name) {
                    Some((_, image)) => *image,
                    None => {
                        return Err(anyhow!(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "snapshot {} has no file '{name}' (it has: {})",
                                args.id,
                                files
                                    .iter()
                                    .map(|(f, _)| f.path.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        )))
                    }
                }
            }
            (memsnap::RootKind::Dir(_), None) => {
                return Err(exit::InvalidInput(format!(
                    "snapshot {} is a checkpoint directory: name the file to serve with --file",
                    args.id
                ))
                .into())
            }
        };
        let mut servers = self.memory_servers.lock();
        if servers.contains_key(&args.socket) {
            bail!("{} is already being served", args.socket.display());
        }
        let pin = self.store.writer(&format!("page server for {}", info.id));
        pin.pin(&image)?;
        let reader = memsnap::ImageReader::open(&self.store, &image, 256 << 20)
            .with_context(|| format!("loading snapshot {}", args.id))?;
        let sets = self.home.join("memory").join("working-sets");
        fs::create_dir_all(&sets).with_context(|| format!("creating {}", sets.display()))?;
        let options = ServeOptions {
            working_set: Some(sets.join(format!("{}.json", image.to_hex()))),
            fault_timeout: args
                .fault_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(ServeOptions::default().fault_timeout),
            ..ServeOptions::default()
        };
        let server =
            PageServer::start(Arc::new(reader), &args.socket, options).with_context(|| {
                format!("serving snapshot {} on {}", args.id, args.socket.display())
            })?;
        let served = ServedMemory {
            snapshot: args.id,
            file: args.file,
            server,
            _pin: pin,
        };
        let answer = served.info();
        servers.insert(args.socket, served);
        Ok(answer)
    }

    pub(super) fn mem_servers(&self) -> Vec<MemServerInfo> {
        self.memory_servers
            .lock()
            .values()
            .map(ServedMemory::info)
            .collect()
    }

    pub(super) fn mem_unserve(&self, socket: &Path) -> anyhow::Result<MemServerInfo> {
        let served = self.memory_servers.lock().remove(socket).ok_or_else(|| {
            anyhow!(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "no page server on {} (see `snapctl mem servers`)",
                    socket.display()
                )
            ))
        })?;
        let ServedMemory {
            snapshot,
            file,
            server,
            _pin,
        } = served;
        let clients = server.clients();
        let stats = server.stop();
        Ok(MemServerInfo {
            snapshot,
            file,
            stats,
            clients,
        })
    }

    /// For a memory snapshot, a lower tree showing it as files: an image
    /// as `memory`, a checkpoint directory's files by their names, each
    /// file's content the image itself. `None` for other snapshots. The
    /// writer returned keeps the new tree alive until a ref holds it.
    pub(super) fn memory_mount_tree(
        &self,
        id: &str,
    ) -> anyhow::Result<Option<(ChunkId, cas::Writer)>> {
        if self.catalog.get(id)?.memory.is_none() {
            return Ok(None);
        }
        let (root, _) = self.catalog.memory_root(id)?;
        let files: Vec<(String, u32, u64, ChunkId)> = match memsnap::root_kind(&self.store, &root)
            .with_context(|| {
            format!("reading memory snapshot {id}")
        })? {
            memsnap::RootKind::Image => {
                let reader = memsnap::ImageReader::open(&self.store, &root, 0)?;
                vec![("memory".into(), 0o600, reader.size(), root)]
            }
            memsnap::RootKind::Dir(files) => files
                .into_iter()
                .map(|(file, image)| (file.path, file.mode & 0o7777, file.size, image))
                .collect(),
        };
        let dir_attrs = layerfs::memtree::implicit_dir_attrs();
        let mut tree = layerfs::MemTree::new(dir_attrs.clone());
        for (path, mode, size, image) in files {
            let attrs = layerfs::tree::Attrs {
                mode,
                ..dir_attrs.clone()
            };
            tree.insert(
                path.as_bytes(),
                layerfs::memtree::MemNode {
                    attrs,
                    kind: layerfs::memtree::MemKind::Other(layerfs::tree::InodeKind::File {
                        size,
                        blob: (size > 0).then_some(image),
                    }),
                },
                &dir_attrs,
            )
            .map_err(|e| anyhow!("memory snapshot {id} names file '{path}': {e}"))?;
        }
        let writer = self.store.writer(&format!("mount of memory snapshot {id}"));
        let tree = tree.store(&writer)?;
        writer.commit()?;
        Ok(Some((tree, writer)))
    }

    /// Stops every page server (making each client whole).
    pub(super) fn stop_memory_servers(&self) {
        let servers = std::mem::take(&mut *self.memory_servers.lock());
        for (_, served) in servers {
            served.server.stop();
        }
    }
}
