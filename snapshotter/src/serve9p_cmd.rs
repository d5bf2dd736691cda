//! `snapctl serve9p`: asks the daemon to serve a mount over 9P2000.L, and
//! lists or stops its listeners.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use crate::api::{Op, Serve9pInfo, Serve9pStart};
use crate::client::Client;
use crate::exit;
use crate::output::Output;

/// `snapctl serve9p`.
#[derive(Args, Debug)]
pub struct Serve9pArgs {
    /// The mount to serve (mount point or id). Without it the listener
    /// serves every mount, the attach name (`aname`) picking one by id or
    /// mount point — over TCP only with the listener's secret, printed
    /// here, in front: `aname=SECRET:MOUNT`.
    mount: Option<String>,
    /// Where to listen: `unix:PATH`, `tcp:HOST:PORT` (loopback unless you
    /// name another address; port 0 picks one), or `fd:N` — a connected
    /// stream socket this command inherited as descriptor N, handed to the
    /// daemon (one session, as a runtime's gofer socket).
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["list", "stop"])]
    listen: Option<String>,
    /// List the daemon's 9P listeners.
    #[arg(long, conflicts_with_all = ["listen", "stop", "mount"])]
    list: bool,
    /// Stop the listener on ADDR (as `--list` shows it) and close its
    /// sessions.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["listen", "mount"])]
    stop: Option<String>,
}

fn line(info: &Serve9pInfo) -> String {
    let by_name = match &info.secret {
        Some(secret) => format!("(by attach name SECRET:MOUNT, secret {secret})"),
        None => "(by attach name)".into(),
    };
    format!(
        "{}\t{}\t{} open, {} total sessions\t{} requests",
        info.listen,
        info.mount.clone().unwrap_or(by_name),
        info.sessions_open,
        info.sessions_total,
        info.requests
    )
}

/// Runs `snapctl serve9p`.
pub fn run(args: Serve9pArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    if args.list {
        let list: Vec<Serve9pInfo> = client.call(Op::Serve9pList)?;
        out.print(&list, || {
            list.iter().map(line).collect::<Vec<_>>().join("\n")
        })?;
        return Ok(exit::code(exit::OK));
    }
    if let Some(listen) = args.stop {
        let info: Serve9pInfo = client.call(Op::Serve9pStop { listen })?;
        out.print(&info, || format!("stopped {}", line(&info)))?;
        return Ok(exit::code(exit::OK));
    }
    let Some(mut listen) = args.listen else {
        bail!("--listen ADDR is required");
    };
    // Paths are the daemon's to open: make them absolute here.
    if let Some(path) = listen.strip_prefix("unix:") {
        let path = crate::client::absolute(Path::new(path))?;
        listen = format!("unix:{}", path.display());
    }
    let mount = args.mount.map(|m| match std::fs::canonicalize(&m) {
        Ok(path) if m.contains('/') || Path::new(&m).is_dir() => path.display().to_string(),
        _ => m,
    });
    let op = Op::Serve9pStart(Serve9pStart {
        mount,
        listen: listen.clone(),
    });
    let info: Serve9pInfo = match listen.strip_prefix("fd:") {
        Some(n) => {
            let fd: i32 = n
                .parse()
                .with_context(|| format!("fd:{n} is not a descriptor number"))?;
            client.call_passing_fd(op, fd)?
        }
        None => client.call(op)?,
    };
    out.print(&info, || info.listen.clone())?;
    if let Some(secret) = &info.secret {
        out.note(&format!(
            "attach names must carry the listener's secret: aname={secret}:MOUNT"
        ));
    }
    out.note(&format!(
        "serving {} over 9P2000.L on {}; `snapctl serve9p --stop {}` ends it",
        info.mount
            .as_deref()
            .unwrap_or("every mount (by attach name)"),
        info.listen,
        info.listen
    ));
    Ok(exit::code(exit::OK))
}
