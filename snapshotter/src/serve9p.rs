//! The daemon's 9P2000.L listeners (`serve9p.*` operations): each serves
//! one mount, or every mount by its id or mount point as the attach name,
//! through `p9server` on one async runtime shared by all listeners. A
//! listener bound to a mount ends (closing its sessions) when the mount
//! ends.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context};
use layerfs::cowfs::CowFs;
use p9server::{Limits, Listen, Listening, PollLimits, Pollers, Server};
use parking_lot::Mutex;

use crate::api::{Serve9pInfo, Serve9pStart};

/// Finds a live mount's filesystem by id or mount point.
pub type FindMount = Arc<dyn Fn(&str) -> Option<(String, Arc<CowFs>)> + Send + Sync>;

struct Entry {
    mount: Option<String>,
    listening: Listening,
}

/// Every 9P listener of the daemon.
pub struct Service {
    runtime: OnceLock<tokio::runtime::Runtime>,
    listeners: Mutex<Vec<Entry>>,
    find: FindMount,
    poll: PollLimits,
    /// Connections polling, counted across every listener (they share
    /// the runtime's threads).
    pollers: Arc<Pollers>,
}

impl Service {
    /// A service resolving mounts with `find`, its connections polling
    /// for their next requests as `poll` allows.
    pub fn new(find: FindMount, poll: PollLimits) -> Service {
        Service {
            runtime: OnceLock::new(),
            listeners: Mutex::new(Vec::new()),
            find,
            poll,
            pollers: Arc::default(),
        }
    }

    fn runtime(&self) -> anyhow::Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("9p")
            .enable_all()
            .build()
            .context("starting the 9P runtime")?;
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// Whether `args.listen` needs a descriptor from the client.
    pub fn wants_fd(args: &Serve9pStart) -> bool {
        args.listen.starts_with("fd:")
    }

    /// Starts a listener; `fd` is the socket a client passed for `fd:`.
    pub fn start(&self, args: Serve9pStart, fd: Option<OwnedFd>) -> anyhow::Result<Serve9pInfo> {
        let mut listen: Listen = args.listen.parse()?;
        let mount = match &args.mount {
            Some(key) => {
                let (id, _) = (self.find)(key).ok_or_else(|| {
                    anyhow!(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no mount with id or mount point '{key}'"),
                    ))
                })?;
                Some(id)
            }
            None => None,
        };
        match (&mut listen, fd) {
            (Listen::Fd(n), Some(fd)) => {
                if !crate::fdpass::is_stream_socket(std::os::fd::AsRawFd::as_raw_fd(&fd)) {
                    bail!("the descriptor passed for fd:{n} is not a stream socket");
                }
                *n = fd.into_raw_fd();
            }
            (Listen::Fd(n), None) => bail!("fd:{n} needs the descriptor passed with the request"),
            (Listen::Unix(path), _) if !path.is_absolute() => {
                bail!("the 9P socket path must be absolute")
            }
            _ => {}
        }
        let find = self.find.clone();
        let bound = mount.clone();
        let resolver: p9server::Resolver = Arc::new(move |aname: &[u8]| {
            let aname = std::str::from_utf8(aname).ok()?;
            match &bound {
                Some(id) => {
                    let (found, fs) = find(id)?;
                    let names_it = aname.is_empty()
                        || aname == "/"
                        || aname == found
                        || find(aname)?.0 == found;
                    names_it.then_some(fs)
                }
                None => find(aname).map(|(_, fs)| fs),
            }
        });
        let limits = Limits {
            poll: self.poll,
            ..Limits::default()
        };
        let server = Server::sharing_pollers(resolver, limits, self.pollers.clone());
        let listening = server
            .listen(self.runtime()?.handle(), &listen)
            .with_context(|| format!("listening on {listen}"))?;
        let info = Self::info(&listening, &mount);
        self.listeners.lock().push(Entry { mount, listening });
        Ok(info)
    }

    fn info(listening: &Listening, mount: &Option<String>) -> Serve9pInfo {
        use std::sync::atomic::Ordering::Relaxed;
        let c = listening.counters();
        Serve9pInfo {
            listen: listening.address.to_string(),
            mount: mount.clone(),
            sessions_open: c.sessions_open.load(Relaxed),
            sessions_total: c.sessions_total.load(Relaxed),
            requests: c.requests.load(Relaxed),
        }
    }

    /// Every listener.
    pub fn list(&self) -> Vec<Serve9pInfo> {
        self.listeners
            .lock()
            .iter()
            .map(|e| Self::info(&e.listening, &e.mount))
            .collect()
    }

    /// Stops the listener on `listen`.
    pub fn stop(&self, listen: &str) -> anyhow::Result<Serve9pInfo> {
        let mut listeners = self.listeners.lock();
        let at = listeners
            .iter()
            .position(|e| e.listening.address.to_string() == listen)
            .ok_or_else(|| {
                anyhow!(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no 9P listener on '{listen}'"),
                ))
            })?;
        let entry = listeners.remove(at);
        Ok(Self::info(&entry.listening, &entry.mount))
    }

    /// Stops the listeners bound to mount `id` (it has ended).
    pub fn forget_mount(&self, id: &str) {
        self.listeners
            .lock()
            .retain(|e| e.mount.as_deref() != Some(id));
    }

    /// Stops every listener.
    pub fn stop_all(&self) {
        self.listeners.lock().clear();
    }
}
