//! Exit codes: each failure kind has its own, so scripts can react.

use std::process::ExitCode;

use cas::ErrorClass;

/// Success.
pub const OK: u8 = 0;
/// A failure that fits no other class.
pub const FAILURE: u8 = 1;
// 2 is clap's code for a command-line usage error.
/// The id, ref or file asked for does not exist.
pub const NOT_FOUND: u8 = 3;
/// No store at the data directory, or it is in use, or of another version.
pub const STORE_UNAVAILABLE: u8 = 4;
/// Stored data failed verification, or fsck found damage.
pub const CORRUPTION: u8 = 5;
/// The operating system failed an operation (disk full, permissions).
pub const IO_ERROR: u8 = 6;
/// The input was invalid (malformed id, bad ref name, ref conflict).
pub const INVALID_INPUT: u8 = 7;
/// The command needs the node daemon (or, for `snapctl volume`, the
/// volume server) and none is running.
pub const NO_DAEMON: u8 = 8;

/// A request the daemon refuses as invalid (exit code 7, "invalid
/// input"); nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// Shown at the end of `snapctl --help`.
pub const HELP: &str = "\
Exit codes: 0 success, 1 other failure, 2 usage error, 3 not found,
4 store missing/in use/wrong version, 5 corruption found, 6 I/O error,
7 invalid input, 8 no node daemon running (start one: snapctl daemon) or,
for `snapctl volume`, no volume server (start one: volume-server).
The data directory is --home, else $STRATA_HOME, else /var/lib/strata (root)
or ~/.local/share/strata. Set STRATA_LOG=info (or debug) for logs on stderr.";

/// The exit code for an error: the class of the first `cas::Error` in its
/// chain, or of an I/O error.
pub fn code_for(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(remote) = cause.downcast_ref::<crate::api::RemoteError>() {
            return remote.code;
        }
        if cause.is::<crate::client::DaemonUnavailable>()
            || cause.is::<crate::volume_cmd::VolumeServerUnavailable>()
        {
            return NO_DAEMON;
        }
        if cause.is::<InvalidInput>() {
            return INVALID_INPUT;
        }
        if cause.is::<crate::runtime::RuntimeMissing>() {
            return NOT_FOUND;
        }
        if let Some(code) = cause.downcast_ref::<remote::Error>().and_then(remote_code) {
            return code;
        }
        match cause.downcast_ref::<memsnap::Error>() {
            Some(memsnap::Error::Corrupt { .. }) => return CORRUPTION,
            Some(memsnap::Error::Invalid(_)) => return INVALID_INPUT,
            Some(memsnap::Error::Io { source, .. }) => {
                return if source.kind() == std::io::ErrorKind::NotFound {
                    NOT_FOUND
                } else {
                    IO_ERROR
                }
            }
            Some(memsnap::Error::Serve(_)) => return FAILURE,
            Some(memsnap::Error::Store(_)) | None => {}
        }
        let class = cause
            .downcast_ref::<cas::Error>()
            .or(match cause.downcast_ref::<memsnap::Error>() {
                Some(memsnap::Error::Store(e)) => Some(e),
                _ => None,
            })
            .map(cas::Error::class)
            .or_else(|| {
                cause
                    .downcast_ref::<layerfs::Error>()
                    .map(layerfs::Error::class)
            });
        if let Some(class) = class {
            return class_code(class);
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return if e.kind() == std::io::ErrorKind::NotFound {
                NOT_FOUND
            } else {
                IO_ERROR
            };
        }
    }
    FAILURE
}

/// The exit code of a bucket error (`None`: none particular to it).
pub fn remote_code(error: &remote::Error) -> Option<u8> {
    Some(match error {
        e if e.is_not_found() => NOT_FOUND,
        remote::Error::Corrupt { .. } => CORRUPTION,
        remote::Error::RefConflict { .. } | remote::Error::Config(_) => INVALID_INPUT,
        remote::Error::Incompatible(_) => STORE_UNAVAILABLE,
        remote::Error::Bucket { .. } => IO_ERROR,
        remote::Error::Store(e) => class_code(e.class()),
        _ => return None,
    })
}

/// The exit code of a store error class.
fn class_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::NotFound => NOT_FOUND,
        ErrorClass::InvalidInput => INVALID_INPUT,
        ErrorClass::StoreUnavailable => STORE_UNAVAILABLE,
        ErrorClass::Corruption => CORRUPTION,
        ErrorClass::Io => IO_ERROR,
        ErrorClass::Internal => FAILURE,
    }
}

/// A short name for the error class, for `--json` output.
pub fn kind_name(code: u8) -> &'static str {
    match code {
        NOT_FOUND => "not_found",
        STORE_UNAVAILABLE => "store_unavailable",
        CORRUPTION => "corruption",
        IO_ERROR => "io",
        INVALID_INPUT => "invalid_input",
        NO_DAEMON => "no_daemon",
        _ => "failure",
    }
}

/// Wraps a code for `main`.
pub fn code(code: u8) -> ExitCode {
    ExitCode::from(code)
}
