//! Keeping volumes in step with the server's bucket (`--remote URL` or
//! `HOME/remote.json`): `volume.push`, `volume.pull`, `volume.sync`, a
//! background sync of every tracked volume every `--sync-secs` and right
//! after each commit, and a last one when the server stops.

use snapshotter::volume_api::SyncResult;

use super::*;
use crate::remote_sync::{SyncReport, VolumeSync};
use crate::Error;

/// What one sync did, as the API shows it.
pub(super) fn sync_result(report: &SyncReport) -> SyncResult {
    SyncResult {
        volume: report.volume.clone(),
        outcome: serde_json::to_value(report.outcome)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        commit: report.commit.to_hex(),
        seq: report.seq,
        generation: report.generation,
        conflicts: report.conflicts.iter().map(rpc::conflict_info).collect(),
        retries: report.retries,
        bytes_uploaded: report.bytes_uploaded,
        error: None,
    }
}

/// Asks the background sync to run soon, and whether it has run since.
#[derive(Default)]
pub(super) struct Nudge {
    pending: Mutex<bool>,
    wake: Condvar,
}

impl VolumeServer {
    pub(super) fn volume_sync(&self) -> anyhow::Result<&VolumeSync> {
        self.sync.as_deref().ok_or_else(|| Error::NoBucket.into())
    }

    /// A commit landed: the background sync runs now rather than at its
    /// next tick.
    pub(super) fn nudge_sync(&self) {
        if self.sync.is_some() {
            *self.nudge.pending.lock() = true;
            self.nudge.wake.notify_all();
        }
    }

    /// Syncs `name`, or every tracked volume: a failure of one is
    /// reported in its result and does not stop the others.
    pub(super) fn sync_volumes(&self, name: Option<&str>) -> anyhow::Result<Vec<SyncResult>> {
        let sync = self.volume_sync()?;
        if let Some(name) = name {
            return Ok(vec![sync_result(&sync.sync(name)?)]);
        }
        let mut out = Vec::new();
        for name in sync.tracked()? {
            match sync.sync(&name) {
                Ok(report) => out.push(sync_result(&report)),
                Err(e) => {
                    tracing::warn!(volume = name, "syncing with the bucket: {e}");
                    out.push(SyncResult {
                        volume: name,
                        outcome: "failed".into(),
                        commit: String::new(),
                        seq: 0,
                        generation: 0,
                        conflicts: Vec::new(),
                        retries: 0,
                        bytes_uploaded: 0,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The background sync: every `sync_secs`, and when nudged.
    pub(super) fn sync_loop(&self) {
        let every = Duration::from_secs(self.sync_secs.max(1));
        loop {
            {
                let mut pending = self.nudge.pending.lock();
                if !*pending {
                    self.nudge.wake.wait_for(&mut pending, every);
                }
                *pending = false;
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.sync_volumes(None) {
                tracing::warn!("syncing volumes with the bucket: {e:#}");
            }
        }
    }
}
