//! Answering each operation of the volume API (the connection loop and
//! the errors' shape are `snapshotter::api_server`'s).

use std::io::{BufReader, BufWriter, Read};
use std::os::unix::net::UnixStream;

use anyhow::anyhow;
use snapshotter::api::{self, Response};
use snapshotter::exit;
use snapshotter::volume_api::{
    CommitInfo, CommitResult, ConflictInfo, FileInfo, VolumeInfo, VolumeOp,
};

use super::*;
use crate::catalog::{Commit, Committed};
use crate::session::Session;
use crate::Error;

/// The exit-code class of a failure: volume errors by kind, the rest as
/// the node daemon classes them.
fn classify(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::NotFound(_)
                | Error::NoSuchPath(_)
                | Error::NoSuchCommit(..)
                | Error::BadSession(_) => exit::NOT_FOUND,
                Error::NotInBucket(_) => exit::NOT_FOUND,
                Error::Exists(_)
                | Error::BadName(_)
                | Error::NotAFile(_)
                | Error::NotTracked(_)
                | Error::Diverged(_)
                | Error::RemovedRemotely(_)
                | Error::NoBucket => exit::INVALID_INPUT,
                Error::Remote(inner) => exit::remote_code(inner).unwrap_or(exit::FAILURE),
                Error::Corrupt(_) => exit::CORRUPTION,
                Error::Store(inner) => code_of(inner.class()),
                Error::Tree(inner) => code_of(inner.class()),
                Error::Contended(_) | Error::Session(_) | Error::QuotaExceeded { .. } => {
                    exit::FAILURE
                }
            };
        }
    }
    exit::code_for(error)
}

fn code_of(class: cas::ErrorClass) -> u8 {
    match class {
        cas::ErrorClass::NotFound => exit::NOT_FOUND,
        cas::ErrorClass::InvalidInput => exit::INVALID_INPUT,
        cas::ErrorClass::StoreUnavailable => exit::STORE_UNAVAILABLE,
        cas::ErrorClass::Corruption => exit::CORRUPTION,
        cas::ErrorClass::Io => exit::IO_ERROR,
        cas::ErrorClass::Internal => exit::FAILURE,
    }
}

fn answer(result: anyhow::Result<serde_json::Value>) -> Response {
    snapshotter::api_server::answer_with(VOLUME_API_VERSION, result, classify)
}

/// A commit as the API shows it.
pub(super) fn commit_info(commit: &Commit) -> CommitInfo {
    let r = &commit.record;
    CommitInfo {
        id: commit.id.to_hex(),
        tree: commit.tree.to_hex(),
        seq: r.seq,
        kind: serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        time_unix_nanos: r.time_unix_nanos,
        author: r.author.clone(),
        paths_changed: r.paths_changed,
        conflicts: r.conflicts.iter().map(conflict_info).collect(),
    }
}

/// A conflict as the API shows it.
pub(super) fn conflict_info(c: &layerfs::Conflict) -> ConflictInfo {
    ConflictInfo {
        path: c.path.clone(),
        kind: serde_json::to_value(c.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        copy: c.copy.clone(),
    }
}

/// A session's commit as the API shows it.
pub(super) fn commit_result(session: &Session, committed: &Committed) -> CommitResult {
    CommitResult {
        session: session.id().into(),
        volume: session.volume().into(),
        head: commit_info(&committed.head.commit),
        wrote: committed.wrote,
        retries: committed.retries as u32,
    }
}

/// Reads the frames a client sends after a request (see
/// [`api::write_frame`]) as one stream of bytes, until the empty frame.
struct FrameReader<R: Read> {
    inner: R,
    frame: Vec<u8>,
    at: usize,
    done: bool,
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.frame.len() {
            if self.done {
                return Ok(0);
            }
            api::read_frame(&mut self.inner, &mut self.frame)?;
            self.at = 0;
            if self.frame.is_empty() {
                self.done = true;
            }
        }
        let n = buf.len().min(self.frame.len() - self.at);
        buf[..n].copy_from_slice(&self.frame[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl snapshotter::api_server::Handler for VolumeServer {
    type Op = VolumeOp;
    const VERSION: u32 = VOLUME_API_VERSION;

    fn handle(&self, op: VolumeOp, conn: &mut UnixStream) -> Response {
        let json = |v: anyhow::Result<serde_json::Value>| answer(v);
        match op {
            VolumeOp::Info => json(serde_json::to_value(self.info()).map_err(Into::into)),
            VolumeOp::Create { name, quota_bytes } => json((|| {
                let head = self.volumes.create(&name, quota_bytes)?;
                Ok(serde_json::to_value(self.volume_info(&name, &head))?)
            })()),
            VolumeOp::List => json((|| {
                let heads = self.volumes.list()?;
                let list: Vec<VolumeInfo> = heads
                    .iter()
                    .map(|h| self.volume_info(&h.commit.record.volume, h))
                    .collect();
                Ok(serde_json::to_value(list)?)
            })()),
            VolumeOp::Show { name } => json((|| {
                self.settle(&name);
                let head = self.volumes.head(&name)?;
                Ok(serde_json::to_value(self.volume_info(&name, &head))?)
            })()),
            VolumeOp::Remove { name } => json((|| {
                if self.has_sessions(&name) {
                    return Err(exit::InvalidInput(format!(
                        "volume '{name}' has sessions ({}); end them first",
                        self.sessions_of(&name).join(", ")
                    ))
                    .into());
                }
                self.volumes.remove(&name)?;
                Ok(serde_json::json!({ "removed": name }))
            })()),
            VolumeOp::Mount {
                name,
                mountpoint,
                commit,
            } => json((|| {
                Ok(serde_json::to_value(
                    self.mount_session(&name, mountpoint, commit)?,
                )?)
            })()),
            VolumeOp::Umount { session } => json((|| {
                let id = self
                    .find(&session)
                    .ok_or_else(|| sessions::not_found(format!("no session '{session}'")))?;
                Ok(serde_json::to_value(self.end_session(&id, false)?)?)
            })()),
            VolumeOp::Sessions => {
                json(serde_json::to_value(self.list_sessions()).map_err(Into::into))
            }
            VolumeOp::Commit { target } => json((|| {
                let results = self
                    .targets(&target, true)?
                    .iter()
                    .map(|id| self.commit_session(id))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(serde_json::to_value(results)?)
            })()),
            VolumeOp::Reload { target } => json((|| {
                let results = self
                    .targets(&target, false)?
                    .iter()
                    .map(|id| self.reload_session(id))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(serde_json::to_value(results)?)
            })()),
            VolumeOp::History { name, limit } => json((|| {
                self.settle(&name);
                let commits = self.volumes.history(&name, limit.unwrap_or(100))?;
                let list: Vec<CommitInfo> = commits.iter().map(commit_info).collect();
                Ok(serde_json::to_value(list)?)
            })()),
            VolumeOp::Restore { name, seq } => json((|| {
                self.settle(&name);
                let head = self.volumes.restore(&name, seq, "restore")?;
                self.nudge_sync();
                Ok(serde_json::to_value(commit_info(&head.commit))?)
            })()),
            VolumeOp::ListFiles { name, path } => json((|| {
                self.settle(&name);
                let list: Vec<FileInfo> = self
                    .volumes
                    .list_files(&name, &path)?
                    .into_iter()
                    .map(|e| FileInfo {
                        name: e.name,
                        kind: e.kind,
                        size: e.size,
                    })
                    .collect();
                Ok(serde_json::to_value(list)?)
            })()),
            VolumeOp::GetFile { name, path } => {
                self.settle(&name);
                // Refuse before the stream starts when there is nothing
                // to stream.
                let file = match self.volumes.resolve_file(&name, &path) {
                    Ok(file) => file,
                    Err(e) => return answer(Err(e.into())),
                };
                let header = answer(Ok(serde_json::json!({ "stream": true })));
                if api::write_line(conn, &header).is_err() {
                    return answer(Err(anyhow!("the client went away")));
                }
                let frames = api::FrameWriter::new(&mut *conn);
                let mut writer = BufWriter::with_capacity(api::FRAME_MAX, frames);
                let result = self.volumes.copy_file(&file, &mut writer);
                let end = std::io::Write::flush(&mut writer)
                    .and_then(|()| writer.into_inner().map_err(|e| e.into_error()))
                    .and_then(|frames| frames.finish().map(|_| ()));
                json((|| {
                    let size = result?;
                    end?;
                    Ok(serde_json::json!({ "path": path, "size": size }))
                })())
            }
            VolumeOp::PutFile { name, path, mode } => {
                self.settle(&name);
                if let Err(e) = self.volumes.head(&name) {
                    return answer(Err(e.into()));
                }
                let ask = answer(Ok(serde_json::json!({ "send": true })));
                if api::write_line(conn, &ask).is_err() {
                    return answer(Err(anyhow!("the client went away")));
                }
                let mut source = FrameReader {
                    inner: BufReader::new(&mut *conn),
                    frame: Vec::new(),
                    at: 0,
                    done: false,
                };
                let result = self
                    .volumes
                    .put_file(&name, &path, &mut source, mode, "outside");
                // Whatever happened, read the client's bytes to their end
                // so that the answer is read as an answer.
                let drained = std::io::copy(&mut source, &mut std::io::sink());
                json((|| {
                    let head = result?;
                    self.nudge_sync();
                    drained?;
                    Ok(serde_json::to_value(commit_info(&head.commit))?)
                })())
            }
            VolumeOp::RemoveFile { name, path } => json((|| {
                self.settle(&name);
                let head = self.volumes.remove_file(&name, &path, "outside")?;
                self.nudge_sync();
                Ok(serde_json::to_value(commit_info(&head.commit))?)
            })()),
            VolumeOp::Serve9pStart { volumes, listen } => json((|| {
                Ok(serde_json::to_value(self.serve9p_start(volumes, &listen)?)?)
            })()),
            VolumeOp::Serve9pList => {
                json(serde_json::to_value(self.serve9p_list()).map_err(Into::into))
            }
            VolumeOp::Gc => json((|| Ok(serde_json::to_value(self.collect_garbage()?)?))()),
            VolumeOp::Push { name } => json((|| {
                let report = self.volume_sync()?.push(&name)?;
                Ok(serde_json::to_value(sync::sync_result(&report))?)
            })()),
            VolumeOp::Pull { name } => json((|| {
                let report = self.volume_sync()?.pull(&name)?;
                Ok(serde_json::to_value(sync::sync_result(&report))?)
            })()),
            VolumeOp::Sync { name } => json((|| {
                Ok(serde_json::to_value(self.sync_volumes(name.as_deref())?)?)
            })()),
            VolumeOp::Serve9pStop { listen } => {
                json((|| Ok(serde_json::to_value(self.serve9p_stop(&listen)?)?))())
            }
        }
    }
}

impl VolumeServer {
    /// The sessions `target` names: a session id or mount point, or a
    /// volume (all its sessions; `settle`: after those already ending).
    fn targets(&self, target: &str, settle: bool) -> anyhow::Result<Vec<String>> {
        if let Some(id) = self.find(target) {
            return Ok(vec![id]);
        }
        if settle {
            self.settle(target);
        }
        self.volumes.head(target).map_err(|_| {
            sessions::not_found(format!("no session, mount point or volume '{target}'"))
        })?;
        Ok(self.sessions_of(target))
    }

    fn volume_info(&self, name: &str, head: &crate::Head) -> VolumeInfo {
        VolumeInfo {
            name: name.to_string(),
            head: commit_info(&head.commit),
            quota_bytes: head.commit.record.quota_bytes,
            bytes: head.commit.record.bytes,
            uncommitted_bytes: self.volumes.uncommitted_bytes(name),
            sessions: self.sessions_of(name).len(),
        }
    }
}
