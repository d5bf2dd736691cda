//! The daemon's 9P2000.L listeners (`serve9p.*` operations): each serves
//! one mount, or every mount by its id or mount point as the attach name,
//! through `p9server` on one async runtime shared by all listeners. A
//! listener bound to a mount ends (closing its sessions) when the mount
//! ends. A TCP listener serving every mount has a secret (128 random bits,
//! given in the answer and in `serve9p.list` on the daemon's owner-only
//! socket) that an attach name must begin with: `SECRET:MOUNT`.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context};
use layerfs::cowfs::CowFs;
use p9server::{Limits, Listen, Listening, PollLimits, Pollers, Server};
use parking_lot::Mutex;

use crate::api::{Serve9pInfo, Serve9pStart};

/// Threads the 9P runtime runs requests that may wait on the disk on.
const BLOCKING_THREADS: usize = 16;

/// Finds a live mount's filesystem by id or mount point.
pub type FindMount = Arc<dyn Fn(&str) -> Option<(String, Arc<CowFs>)> + Send + Sync>;

struct Entry {
    mount: Option<String>,
    /// What an attach to an unbound TCP listener must carry.
    secret: Option<String>,
    listening: Listening,
}

/// A new listener secret: 128 random bits, in hex.
fn new_secret() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading a random secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares without stopping at the first difference (no timing clue).
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Every 9P listener of the daemon.
pub struct Service {
    runtime: OnceLock<tokio::runtime::Runtime>,
    listeners: Mutex<Vec<Entry>>,
    find: FindMount,
    poll: PollLimits,
    /// Nice steps lower for a pipelining session's work (`Limits::queued_nice`).
    queued_nice: i32,
    /// Connections polling, counted across every listener (they share
    /// the runtime's threads).
    pollers: Arc<Pollers>,
}

impl Service {
    /// A service resolving mounts with `find`, its connections polling
    /// for their next requests as `poll` allows, the work of sessions that
    /// pipeline `queued_nice` steps lower in priority.
    pub fn new(find: FindMount, poll: PollLimits, queued_nice: i32) -> Service {
        Service {
            runtime: OnceLock::new(),
            listeners: Mutex::new(Vec::new()),
            find,
            poll,
            queued_nice,
            pollers: Arc::default(),
        }
    }

    fn runtime(&self) -> anyhow::Result<&tokio::runtime::Runtime> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Requests that may wait on the disk run here; clients can
            // queue them, not threads.
            .max_blocking_threads(BLOCKING_THREADS)
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
        // Over TCP anyone who reaches the port may attach: a listener not
        // bound to one mount serves only attaches that carry its secret.
        let secret = match (&listen, &mount) {
            (Listen::Tcp(_), None) => Some(new_secret()?),
            _ => None,
        };
        let find = self.find.clone();
        let bound = mount.clone();
        let required = secret.clone();
        let resolver: p9server::Resolver = Arc::new(move |aname: &[u8]| {
            let aname = match &required {
                Some(secret) => {
                    let at = aname.iter().position(|&b| b == b':')?;
                    if !same_secret(&aname[..at], secret.as_bytes()) {
                        return None;
                    }
                    &aname[at + 1..]
                }
                None => aname,
            };
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
            queued_nice: self.queued_nice,
            ..Limits::default()
        };
        let server = Server::sharing_pollers(resolver, limits, self.pollers.clone());
        let listening = server
            .listen(self.runtime()?.handle(), &listen)
            .with_context(|| format!("listening on {listen}"))?;
        let entry = Entry {
            mount,
            secret,
            listening,
        };
        let info = Self::info(&entry);
        self.listeners.lock().push(entry);
        Ok(info)
    }

    fn info(entry: &Entry) -> Serve9pInfo {
        use std::sync::atomic::Ordering::Relaxed;
        let c = entry.listening.counters();
        Serve9pInfo {
            listen: entry.listening.address.to_string(),
            mount: entry.mount.clone(),
            secret: entry.secret.clone(),
            sessions_open: c.sessions_open.load(Relaxed),
            sessions_total: c.sessions_total.load(Relaxed),
            requests: c.requests.load(Relaxed),
        }
    }

    /// Every listener.
    pub fn list(&self) -> Vec<Serve9pInfo> {
        self.listeners.lock().iter().map(Self::info).collect()
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
        Ok(Self::info(&entry))
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
