//! The node daemon under benchmark, spoken to over its API socket as a
//! platform would.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::tools::disk_usage;

/// The node daemon, spoken to over its socket.
pub struct StrataDaemon {
    child: Child,
    pub home: PathBuf,
    conn: ApiConnection,
}

impl StrataDaemon {
    /// Starts the daemon of `home`, initialising its store first.
    pub fn start(snapctl: &Path, home: &Path) -> Result<StrataDaemon> {
        StrataDaemon::start_with(snapctl, home, &[])
    }

    /// Starts the daemon of `home`, initialising its store first with
    /// `store init` arguments `init`.
    pub fn start_with(snapctl: &Path, home: &Path, init: &[&str]) -> Result<StrataDaemon> {
        if !home.join("strata-store.json").exists() {
            let status = Command::new(snapctl)
                .args(["--home"])
                .arg(home)
                .args(["store", "init"])
                .args(init)
                .stdout(Stdio::null())
                .status()?;
            if !status.success() {
                bail!("snapctl store init failed");
            }
        }
        let child = Command::new(snapctl)
            .arg("--home")
            .arg(home)
            .arg("daemon")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the node daemon")?;
        let conn = ApiConnection::open(&home.join("snapd.sock"))
            .context("connecting to the node daemon")?;
        Ok(StrataDaemon {
            child,
            home: home.to_path_buf(),
            conn,
        })
    }

    /// Calls one API operation; its result.
    pub fn call(&mut self, op: &str, args: Value) -> Result<Value> {
        self.conn.call(op, args)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Bytes the store takes on disk.
    pub fn store_bytes(&self) -> Result<u64> {
        Ok(disk_usage(&self.home.join("packs"))? + disk_usage(&self.home.join("index"))?)
    }
}

/// A connection to a Strata daemon's JSON-lines API (the node daemon's,
/// or `volume-server`'s: the same framing).
pub struct ApiConnection {
    conn: BufReader<UnixStream>,
}

impl ApiConnection {
    /// Connects to `socket`, waiting up to 30 s for the daemon to listen.
    pub fn open(socket: &Path) -> Result<ApiConnection> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", socket.display()))
                }
            }
        };
        Ok(ApiConnection {
            conn: BufReader::new(stream),
        })
    }

    /// Calls one API operation; its result.
    pub fn call(&mut self, op: &str, args: Value) -> Result<Value> {
        // Operations without arguments take none (not even an empty map).
        let request = if args.is_null() {
            json!({ "api": 1, "op": op })
        } else {
            json!({ "api": 1, "op": op, "args": args })
        };
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        self.conn.get_mut().write_all(&line)?;
        let mut answer = String::new();
        self.conn.read_line(&mut answer)?;
        let value: Value = serde_json::from_str(&answer).context("daemon answer")?;
        if value["ok"] != true {
            bail!("{op} failed: {}", value["error"]["message"]);
        }
        Ok(value["result"].clone())
    }
}

impl Drop for StrataDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; SIGTERM makes the
        // daemon unmount everything and exit.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
