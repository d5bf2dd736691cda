//! The `snapctl` side of the daemon's local API.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;

use crate::api::{self, Op, Request, Response, API_VERSION};

/// Nothing answers on the daemon's socket.
#[derive(Debug, thiserror::Error)]
#[error(
    "no node daemon is running for {home} (nothing answers on {socket}: {reason}); \
     start one with `snapctl --home {home} daemon` (it runs in the foreground: \
     put it under a service manager or end the line with `&`)"
)]
pub struct DaemonUnavailable {
    pub home: String,
    pub socket: String,
    pub reason: std::io::Error,
}

/// A connection to the node daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon of data directory `home`.
    pub fn connect(home: &Path) -> anyhow::Result<Client> {
        let socket = api::socket_path(home);
        let stream = UnixStream::connect(&socket).map_err(|reason| DaemonUnavailable {
            home: home.display().to_string(),
            socket: socket.display().to_string(),
            reason,
        })?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn send(&mut self, op: Op) -> anyhow::Result<()> {
        api::write_line(
            &mut self.writer,
            &Request {
                api: API_VERSION,
                op,
            },
        )
        .context("sending a request to the node daemon")
    }

    fn receive(&mut self) -> anyhow::Result<serde_json::Value> {
        let line = api::read_line(&mut self.reader)
            .context("reading the node daemon's answer")?
            .ok_or_else(|| anyhow!("the node daemon closed the connection without answering"))?;
        let response: Response =
            serde_json::from_str(&line).context("the node daemon's answer is not understood")?;
        if response.ok {
            Ok(response.result.unwrap_or(serde_json::Value::Null))
        } else {
            match response.error {
                Some(error) => Err(error.into()),
                None => bail!("the node daemon reported a failure without saying which"),
            }
        }
    }

    /// Sends one request and returns its result.
    pub fn call<T: DeserializeOwned>(&mut self, op: Op) -> anyhow::Result<T> {
        self.send(op)?;
        let value = self.receive()?;
        serde_json::from_value(value).context("the node daemon's result is not understood")
    }

    /// Sends a request that hands the daemon descriptor `fd` (it answers
    /// `{send_fd: true}` first) and returns the final result.
    pub fn call_passing_fd<T: DeserializeOwned>(
        &mut self,
        op: Op,
        fd: std::os::fd::RawFd,
    ) -> anyhow::Result<T> {
        self.send(op)?;
        let ask = self.receive()?;
        if ask.get("send_fd").and_then(|v| v.as_bool()) != Some(true) {
            bail!("the node daemon did not ask for the descriptor");
        }
        crate::fdpass::send_fd(&self.writer, fd)
            .with_context(|| format!("passing descriptor {fd} to the node daemon"))?;
        let value = self.receive()?;
        serde_json::from_value(value).context("the node daemon's result is not understood")
    }

    /// Sends a request whose answer streams bytes (a streamed export),
    /// copies them to `out` and returns the final result.
    pub fn call_streaming<T: DeserializeOwned>(
        &mut self,
        op: Op,
        out: &mut impl Write,
    ) -> anyhow::Result<T> {
        self.send(op)?;
        self.receive()?;
        let mut frame = Vec::new();
        loop {
            api::read_frame(&mut self.reader, &mut frame)
                .context("reading the exported stream from the node daemon")?;
            if frame.is_empty() {
                break;
            }
            out.write_all(&frame)
                .context("writing the exported stream")?;
        }
        out.flush().context("writing the exported stream")?;
        let value = self.receive()?;
        serde_json::from_value(value).context("the node daemon's result is not understood")
    }
}

/// An absolute form of a path given on the command line (the daemon does
/// not share our working directory).
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
