//! The `snapctl` side of the daemon's local API.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;

use serde::Serialize;

use crate::api::{self, Request, Response, API_VERSION};

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

/// A connection to the node daemon (or another daemon speaking the same
/// framing: the volume server).
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Who answers, for messages ("the node daemon").
    peer: &'static str,
    /// The API version requests name.
    version: u32,
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
        Client::over(stream, "the node daemon", API_VERSION)
    }

    /// A client over a connected `stream` to `peer` (named in messages),
    /// naming API version `version` in its requests.
    pub fn over(stream: UnixStream, peer: &'static str, version: u32) -> anyhow::Result<Client> {
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            peer,
            version,
        })
    }

    fn send<O: Serialize>(&mut self, op: O) -> anyhow::Result<()> {
        api::write_line(
            &mut self.writer,
            &Request {
                api: self.version,
                op,
            },
        )
        .with_context(|| format!("sending a request to {}", self.peer))
    }

    /// The connection, for operations that stream bytes after their
    /// request line.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.writer
    }

    fn receive(&mut self) -> anyhow::Result<serde_json::Value> {
        let peer = self.peer;
        let line = api::read_line(&mut self.reader)
            .with_context(|| format!("reading {peer}'s answer"))?
            .ok_or_else(|| anyhow!("{peer} closed the connection without answering"))?;
        let response: Response = serde_json::from_str(&line)
            .with_context(|| format!("{peer}'s answer is not understood"))?;
        if response.ok {
            Ok(response.result.unwrap_or(serde_json::Value::Null))
        } else {
            match response.error {
                Some(error) => Err(error.into()),
                None => bail!("{peer} reported a failure without saying which"),
            }
        }
    }

    fn result<T: DeserializeOwned>(&self, value: serde_json::Value) -> anyhow::Result<T> {
        serde_json::from_value(value)
            .with_context(|| format!("{}'s result is not understood", self.peer))
    }

    /// Sends one request and returns its result.
    pub fn call<T: DeserializeOwned>(&mut self, op: impl Serialize) -> anyhow::Result<T> {
        self.send(op)?;
        let value = self.receive()?;
        self.result(value)
    }

    /// Sends a request whose bytes follow it in frames (see
    /// [`api::write_frame`]), read from `input` until its end, once the
    /// daemon answered `{send: true}` (it may refuse first), and returns
    /// the result.
    pub fn call_sending<T: DeserializeOwned>(
        &mut self,
        op: impl Serialize,
        input: &mut impl std::io::Read,
    ) -> anyhow::Result<T> {
        self.send(op)?;
        let ask = self.receive()?;
        let peer = self.peer;
        if ask.get("send").and_then(|v| v.as_bool()) != Some(true) {
            bail!("{peer} did not ask for the bytes");
        }
        let mut frames = std::io::BufWriter::with_capacity(
            api::FRAME_MAX,
            api::FrameWriter::new(&mut self.writer),
        );
        std::io::copy(input, &mut frames)
            .with_context(|| format!("sending the bytes to {peer}"))?;
        frames
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|frames| frames.finish())
            .with_context(|| format!("sending the bytes to {peer}"))?;
        let value = self.receive()?;
        self.result(value)
    }

    /// Sends a request that hands the daemon descriptor `fd` (it answers
    /// `{send_fd: true}` first) and returns the final result.
    pub fn call_passing_fd<T: DeserializeOwned>(
        &mut self,
        op: impl Serialize,
        fd: std::os::fd::RawFd,
    ) -> anyhow::Result<T> {
        self.send(op)?;
        let ask = self.receive()?;
        if ask.get("send_fd").and_then(|v| v.as_bool()) != Some(true) {
            bail!("{} did not ask for the descriptor", self.peer);
        }
        crate::fdpass::send_fd(&self.writer, fd)
            .with_context(|| format!("passing descriptor {fd} to {}", self.peer))?;
        let value = self.receive()?;
        self.result(value)
    }

    /// Sends a request whose answer streams bytes (a streamed export),
    /// copies them to `out` and returns the final result.
    pub fn call_streaming<T: DeserializeOwned>(
        &mut self,
        op: impl Serialize,
        out: &mut impl Write,
    ) -> anyhow::Result<T> {
        self.send(op)?;
        self.receive()?;
        let mut frame = Vec::new();
        loop {
            api::read_frame(&mut self.reader, &mut frame)
                .with_context(|| format!("reading the stream from {}", self.peer))?;
            if frame.is_empty() {
                break;
            }
            out.write_all(&frame)
                .context("writing the exported stream")?;
        }
        out.flush().context("writing the exported stream")?;
        let value = self.receive()?;
        self.result(value)
    }
}

/// An absolute form of a path given on the command line (the daemon does
/// not share our working directory).
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
