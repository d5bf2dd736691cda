//! The serving side of a JSON-lines API (the node daemon's, the volume
//! server's): accepting connections up to a bound, reading one request
//! line after another, answering each with one line, and the shape of
//! errors on the wire (an exit-code class, its name, the error chain).

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::api::{self, RemoteError, Response};
use crate::exit;

/// A daemon that answers requests of one API.
pub trait Handler: Send + Sync + 'static {
    /// The operations it knows.
    type Op: DeserializeOwned;
    /// The API version it speaks.
    const VERSION: u32;
    /// Answers one request. `conn` is for operations that stream bytes
    /// between their answer lines.
    fn handle(&self, op: Self::Op, conn: &mut UnixStream) -> Response;
}

/// The answer to a request that returned `result`, a failure classed by
/// `classify` (an exit code of [`exit`]).
pub fn answer_with(
    version: u32,
    result: anyhow::Result<serde_json::Value>,
    classify: impl Fn(&anyhow::Error) -> u8,
) -> Response {
    match result {
        Ok(value) => Response {
            api: version,
            ok: true,
            result: Some(value),
            error: None,
        },
        Err(error) => refusal(version, classify(&error), format!("{error:#}")),
    }
}

/// On the first SIGTERM or SIGINT (logged with `message`): removes
/// `socket`, so that no new client connects, runs `stop`, and exits 0.
pub fn stop_on_signal(
    socket: std::path::PathBuf,
    message: &'static str,
    stop: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "{message}");
                let _ = std::fs::remove_file(&socket);
                stop();
                std::process::exit(0);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// An error answer of class `code` with `message`.
pub fn refusal(version: u32, code: u8, message: String) -> Response {
    Response {
        api: version,
        ok: false,
        result: None,
        error: Some(RemoteError {
            kind: exit::kind_name(code).into(),
            code,
            message,
        }),
    }
}

/// Answers a connection the daemon will not serve with one error line.
pub fn turn_away(version: u32, conn: &mut UnixStream, message: &str) {
    let response = refusal(version, exit::FAILURE, message.to_string());
    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = api::write_line(conn, &response);
}

/// Serves one connection until the client closes it: a line that is not
/// a request of `H`'s API is answered with an "invalid input" error, a
/// line too long or cut off is answered so and ends the connection.
pub fn serve_connection<H: Handler>(handler: &H, stream: UnixStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut conn = stream;
    loop {
        let line = match api::read_line_bytes(&mut reader) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let _ = api::write_line(
                    &mut conn,
                    &refusal(
                        H::VERSION,
                        exit::INVALID_INPUT,
                        format!("bad request line: {e}"),
                    ),
                );
                break;
            }
            Err(e) => return Err(e),
        };
        let response = match api::parse_request_as::<H::Op>(&line, H::VERSION) {
            Ok(request) => handler.handle(request.op, &mut conn),
            Err(message) => refusal(H::VERSION, exit::INVALID_INPUT, message),
        };
        api::write_line(&mut conn, &response)?;
    }
    Ok(())
}

/// Accepts connections on `listener` for ever, each served on a thread of
/// its own; past `max_connections` open at once (or when no thread can
/// be had) a connection is turned away with one error line, and the
/// daemon goes on.
pub fn accept_connections<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    max_connections: usize,
) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                continue;
            }
        };
        if open.fetch_add(1, Ordering::SeqCst) >= max_connections {
            open.fetch_sub(1, Ordering::SeqCst);
            turn_away(
                H::VERSION,
                &mut conn,
                &format!("the daemon already serves {max_connections} API connections; try again"),
            );
            continue;
        }
        let (handler, count) = (handler.clone(), open.clone());
        let refusal = conn.try_clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(&*handler, conn) {
                    tracing::debug!("connection ended: {e}");
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("no thread for an API connection: {e}");
            if let Ok(mut conn) = refusal {
                turn_away(
                    H::VERSION,
                    &mut conn,
                    &format!("the daemon cannot serve this connection now: {e}"),
                );
            }
        }
    }
}

/// Binds the API socket at `socket`, owner-only, after making sure no
/// daemon answers there already (`what` names the daemon for the
/// message) and clearing a stale socket file.
pub fn bind_socket(socket: &std::path::Path, what: &str) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    if UnixStream::connect(socket).is_ok() {
        anyhow::bail!("a {what} already answers on {}", socket.display());
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    Ok(listener)
}
