//! Answering each operation of the node daemon's API (the connection
//! loop and the errors' shape are [`crate::api_server`]'s).

use super::*;

fn answer(result: anyhow::Result<serde_json::Value>) -> Response {
    crate::api_server::answer_with(API_VERSION, result, exit::code_for)
}

impl crate::api_server::Handler for Daemon {
    type Op = Op;
    const VERSION: u32 = API_VERSION;
    fn handle(&self, op: Op, conn: &mut UnixStream) -> Response {
        self.answer_op(op, conn)
    }
}

impl Daemon {
    /// Answers one request. `conn` is only written to by a streamed export.
    pub(super) fn answer_op(&self, op: Op, conn: &mut UnixStream) -> Response {
        let json = |v: anyhow::Result<serde_json::Value>| answer(v);
        match op {
            Op::Info => json(Ok(serde_json::to_value(self.info()).unwrap_or_default())),
            Op::ImageImport(args) => json((|| {
                if !args.source.is_absolute() {
                    bail!("the import source must be an absolute path");
                }
                let options = ImportOptions {
                    limits: args.limits.unwrap_or_default(),
                    tag: args.tag,
                    kind: args.kind,
                };
                let report = import_pool()
                    .install(|| {
                        layerfs::import_image(&self.store, &args.name, &args.source, &options)
                    })
                    .with_context(|| {
                        format!(
                            "importing {} as image '{}'",
                            args.source.display(),
                            args.name
                        )
                    })?;
                Ok(serde_json::to_value(report)?)
            })()),
            Op::ImageList => json((|| {
                Ok(serde_json::to_value(layerfs::list_images(&self.store)?)?)
            })()),
            Op::ImageShow { name } => json((|| {
                Ok(serde_json::to_value(layerfs::get_image(
                    &self.store,
                    &name,
                )?)?)
            })()),
            Op::ImageRemove { name } => json((|| {
                layerfs::remove_image(&self.store, &name)?;
                Ok(serde_json::json!({ "removed": name }))
            })()),
            Op::ImageExport {
                name,
                to: ExportTarget::File(path),
            } => json((|| {
                if !path.is_absolute() {
                    bail!("the export target must be an absolute path");
                }
                let tree = layerfs::image_tree(&self.store, &name)?;
                let file =
                    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let mut writer = BufWriter::new(file);
                let stats = layerfs::export_tar(&self.store, tree, &mut writer)?;
                writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                Ok(serde_json::to_value(stats)?)
            })()),
            Op::ImageExport {
                name,
                to: ExportTarget::Stream,
            } => {
                let tree = match layerfs::image_tree(&self.store, &name) {
                    Ok(tree) => tree,
                    Err(e) => return answer(Err(e.into())),
                };
                let header = answer(Ok(serde_json::json!({ "stream": true })));
                if api::write_line(conn, &header).is_err() {
                    return answer(Err(anyhow!("the client went away")));
                }
                let frames = FrameWriter::new(&mut *conn);
                let mut writer = BufWriter::with_capacity(api::FRAME_MAX, frames);
                let result = layerfs::export_tar(&self.store, tree, &mut writer)
                    .map_err(anyhow::Error::from)
                    .and_then(|stats| {
                        writer.flush()?;
                        Ok(stats)
                    });
                let end = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|frames| frames.finish().map(|_| ()));
                json(result.and_then(|stats| {
                    end?;
                    Ok(serde_json::to_value(stats)?)
                }))
            }
            Op::MountCreate(args) => json(
                self.mount_create(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::MountList => json(serde_json::to_value(self.mount_list()).map_err(Into::into)),
            Op::MountRemove { mount } => json(
                self.mount_remove(&mount)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotCreate(args) => json(
                self.snapshot_create(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotList(filter) => json(
                self.catalog
                    .list(&filter)
                    .and_then(|list| Ok(serde_json::to_value(list)?)),
            ),
            Op::SnapshotShow { id } => json((|| {
                let mut info = self.catalog.get(&id)?;
                if let Some(tree) = &info.tree {
                    let tree: ChunkId = tree.parse().map_err(|e| anyhow!("bad tree id: {e}"))?;
                    info.total_bytes = Some(tree_bytes(&self.store, tree)?);
                }
                Ok(serde_json::to_value(info)?)
            })()),
            Op::SnapshotWait { id } => json(
                self.catalog
                    .wait(&id)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotDiff { a, b } => json((|| {
                let (ta, _) = self.catalog.tree_of(&a)?;
                let (tb, _) = self.catalog.tree_of(&b)?;
                Ok(serde_json::to_value(layerfs::diff_trees(
                    &self.store,
                    ta,
                    tb,
                )?)?)
            })()),
            Op::SnapshotRemove { id } => json(
                self.catalog
                    .remove(&id)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::StoreGc => json((|| Ok(serde_json::to_value(self.store.gc()?)?))()),
            Op::MountGraft {
                mount,
                snapshot,
                path,
            } => json(
                self.graft(&mount, &snapshot, &path)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SnapshotFork(args) => json(
                self.fork(args)
                    .and_then(|mounts| Ok(serde_json::to_value(mounts)?)),
            ),
            Op::Serve9pStart(args) => {
                let fd = if serve9p::Service::wants_fd(&args) {
                    let ask = answer(Ok(serde_json::json!({ "send_fd": true })));
                    if api::write_line(conn, &ask).is_err() {
                        return answer(Err(anyhow!("the client went away")));
                    }
                    match crate::fdpass::recv_fd(conn) {
                        Ok(fd) => Some(fd),
                        Err(e) => return answer(Err(anyhow!(e).context("receiving the socket"))),
                    }
                } else {
                    None
                };
                json(
                    self.p9()
                        .start(args, fd)
                        .and_then(|info| Ok(serde_json::to_value(info)?)),
                )
            }
            Op::Serve9pList => json(serde_json::to_value(self.p9().list()).map_err(Into::into)),
            Op::Serve9pStop { listen } => json(
                self.p9()
                    .stop(&listen)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::MemPut(args) => json(
                self.mem_put(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::MemGet(args) => json(
                self.mem_get(args)
                    .and_then(|stats| Ok(serde_json::to_value(stats)?)),
            ),
            Op::MemServe(args) => json(
                self.mem_serve(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::MemServers => json(serde_json::to_value(self.mem_servers()).map_err(Into::into)),
            Op::SandboxCreate(args) => json(
                self.sandbox_create(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SandboxList => json(serde_json::to_value(self.sandbox_list()).map_err(Into::into)),
            Op::SandboxShow { id } => json(
                self.sandbox_show(&id)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SandboxSnapshot(args) => json(
                self.sandbox_snapshot(args)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SandboxFork { id, count } => json(
                self.sandbox_fork(&id, count)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SandboxRemove { id } => json(
                self.sandbox_remove(&id)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::SandboxTerminate { id } => json(
                self.sandbox_terminate(&id)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::RemotePush { refs } => json(
                self.remote_push(&refs)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::RemotePull { refs } => json(
                self.remote_pull(&refs)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::RemoteList { prefix } => json(
                self.remote_list(&prefix)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::RemotePins => json(
                self.remote()
                    .and_then(|r| Ok(r.pins()?))
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::RemoteUnpin { refs } => json(
                self.remote_unpin(&refs)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::RemoteGc => json(
                self.remote_gc()
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::RemoteStatus => json(
                self.remote_status()
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
            Op::MemUnserve { socket } => json(
                self.mem_unserve(&socket)
                    .and_then(|info| Ok(serde_json::to_value(info)?)),
            ),
        }
    }
}
