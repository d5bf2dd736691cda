//! 9P2000.L listeners bound to volumes. Each connection is a session of
//! each volume it attaches (the attach name is the volume's name, or empty
//! when the listener serves one volume); an attach naming any other
//! volume is refused. When the connection ends — the client closed it,
//! or its process was killed and the kernel closed the socket — and its
//! last request is done, its sessions are committed and removed.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context};
use layerfs::cowfs::CowFs;
use p9server::{Limits, Listen, Listening, PollLimits, Server};
use snapshotter::volume_api::VolumeListenerInfo;

use super::*;

/// Threads the 9P runtime runs requests that may wait on the disk on.
const BLOCKING_THREADS: usize = 16;

/// One listener.
pub(super) struct Entry {
    volumes: Vec<String>,
    listening: Listening,
}

/// One 9P connection: the sessions it opened, by volume.
pub(super) struct Connection {
    server: Weak<VolumeServer>,
    listen: String,
    volumes: Vec<String>,
    opened: parking_lot::Mutex<BTreeMap<String, (String, Arc<CowFs>)>>,
    /// Held while a session is being opened, so that two attaches at once
    /// open one. Not `opened`'s lock: opening settles the volume, which
    /// asks every connection (this one too) what it serves.
    opening: parking_lot::Mutex<()>,
    /// A duplicate of its socket: tells whether the client hung up (its
    /// process was killed, say) before the connection's task has read to
    /// the end.
    socket: Option<std::os::fd::OwnedFd>,
}

impl Connection {
    /// Whether this connection opened a session of `volume`.
    pub(super) fn serves(&self, volume: &str) -> bool {
        self.opened.lock().contains_key(volume)
    }

    /// Whether the client has hung up (its side of the socket is closed).
    pub(super) fn peer_gone(&self) -> bool {
        let Some(socket) = &self.socket else {
            return false;
        };
        let mut pollfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(socket),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, a descriptor we own, no
        // waiting (timeout 0).
        let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
        ready > 0 && pollfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// The filesystem an attach to `aname` gets: this connection's session
    /// of that volume, opened at the first attach.
    fn attach(&self, aname: &[u8]) -> Option<Arc<CowFs>> {
        let aname = std::str::from_utf8(aname).ok()?;
        let volume = match aname.trim_start_matches('/') {
            "" if self.volumes.len() == 1 => self.volumes[0].clone(),
            name if self.volumes.iter().any(|v| v == name) => name.to_string(),
            _ => {
                tracing::warn!(
                    listen = self.listen,
                    "9P attach to '{aname}' refused: this listener serves {:?}",
                    self.volumes
                );
                return None;
            }
        };
        let _opening = self.opening.lock();
        if let Some((_, fs)) = self.opened.lock().get(&volume) {
            return Some(fs.clone());
        }
        let server = self.server.upgrade()?;
        match server.open_session(&volume, None, Some(self.listen.clone()), None) {
            Ok((record, session)) => {
                let fs = session.fs().clone();
                self.opened
                    .lock()
                    .insert(volume, (record.id.clone(), fs.clone()));
                server.add_session(record, session);
                Some(fs)
            }
            Err(e) => {
                tracing::error!(volume, "starting a 9P session: {e:#}");
                None
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(server) = self.server.upgrade() {
            for (_, (id, _)) in std::mem::take(&mut *self.opened.lock()) {
                server.end_in_background(id);
            }
            server.connections.end();
        }
    }
}

impl VolumeServer {
    fn runtime(&self) -> anyhow::Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("9p")
            .enable_all()
            .build()
            .context("starting the 9P runtime")?;
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// `serve9p.start`: serves sessions of `volumes` on `listen`.
    pub(super) fn serve9p_start(
        &self,
        volumes: Vec<String>,
        listen: &str,
    ) -> anyhow::Result<VolumeListenerInfo> {
        if volumes.is_empty() {
            return Err(snapshotter::exit::InvalidInput(
                "name at least one volume for the listener to serve".into(),
            )
            .into());
        }
        for name in &volumes {
            self.volumes.head(name)?;
        }
        let listen: Listen = listen.parse()?;
        match &listen {
            Listen::Unix(path) if !path.is_absolute() => {
                bail!("the 9P socket path must be absolute")
            }
            Listen::Fd(_) => bail!("the volume server listens on unix:PATH or tcp:HOST:PORT"),
            _ => {}
        }
        let me = self.me.get().cloned().unwrap_or_default();
        let served = volumes.clone();
        let address = listen.to_string();
        let resolvers: p9server::ResolverFactory = Arc::new(move |_, socket| {
            let connection = Arc::new(Connection {
                server: me.clone(),
                listen: address.clone(),
                volumes: served.clone(),
                opened: parking_lot::Mutex::new(BTreeMap::new()),
                opening: parking_lot::Mutex::new(()),
                socket: socket.try_clone_to_owned().ok(),
            });
            if let Some(server) = me.upgrade() {
                server.connections.begin();
                let mut live = server.live_connections.lock();
                live.retain(|c| c.strong_count() > 0);
                live.push(Arc::downgrade(&connection));
            }
            Arc::new(move |aname: &[u8]| connection.attach(aname))
        });
        let limits = Limits {
            poll: PollLimits {
                max_wait: Duration::from_micros(50),
                max_pollers: std::thread::available_parallelism()
                    .map_or(1, |n| (n.get() / 4).max(1)),
            },
            ..Limits::default()
        };
        let server = Server::per_connection(resolvers, limits, self.pollers.clone());
        let listening = server
            .listen(self.runtime()?.handle(), &listen)
            .map_err(|e| anyhow!(e).context(format!("listening on {listen}")))?;
        let entry = Entry { volumes, listening };
        let info = Self::listener_info(&entry);
        self.listeners.lock().push(entry);
        Ok(info)
    }

    fn listener_info(entry: &Entry) -> VolumeListenerInfo {
        use std::sync::atomic::Ordering::Relaxed;
        let c = entry.listening.counters();
        VolumeListenerInfo {
            listen: entry.listening.address.to_string(),
            volumes: entry.volumes.clone(),
            sessions_open: c.sessions_open.load(Relaxed),
            sessions_total: c.sessions_total.load(Relaxed),
        }
    }

    pub(super) fn serve9p_list(&self) -> Vec<VolumeListenerInfo> {
        self.listeners
            .lock()
            .iter()
            .map(Self::listener_info)
            .collect()
    }

    pub(super) fn serve9p_stop(&self, listen: &str) -> anyhow::Result<VolumeListenerInfo> {
        let mut listeners = self.listeners.lock();
        let at = listeners
            .iter()
            .position(|e| e.listening.address.to_string() == listen)
            .ok_or_else(|| sessions::not_found(format!("no 9P listener on '{listen}'")))?;
        let entry = listeners.remove(at);
        Ok(Self::listener_info(&entry))
    }
}
