//! How results and errors reach the user: text for people, JSON for
//! programs, progress bars only on a terminal.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::exit;

/// The output mode of one invocation.
pub struct Output {
    json: bool,
    interactive: bool,
}

impl Output {
    /// `json` selects JSON on stdout; progress bars appear only when
    /// stdout and stderr are terminals and JSON is off.
    pub fn new(json: bool) -> Output {
        let interactive =
            !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Output { json, interactive }
    }

    /// Whether JSON output was asked for.
    pub fn json(&self) -> bool {
        self.json
    }

    /// Prints a result: `value` as JSON, or `human` as text.
    pub fn print<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)?;
        } else {
            let text = human();
            if !text.is_empty() {
                writeln!(stdout, "{text}")?;
            }
        }
        Ok(())
    }

    /// A note for people on stderr (suppressed with `--json`).
    pub fn note(&self, text: &str) {
        if !self.json {
            eprintln!("{text}");
        }
    }

    /// A byte-count progress bar (hidden unless interactive).
    pub fn bytes_bar(&self, total: Option<u64>, what: &str) -> ProgressBar {
        if !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::no_length(),
        };
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "{msg} {spinner} {bytes} {bytes_per_sec}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        bar
    }

    /// A spinner with a message (hidden unless interactive).
    pub fn spinner(&self, what: &str) -> ProgressBar {
        if !self.interactive {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar.set_message(what.to_string());
        bar
    }

    /// Reports an error and returns the exit code for it.
    pub fn fail(&self, error: &anyhow::Error) -> ExitCode {
        let code = exit::code_for(error);
        if self.json {
            let value = serde_json::json!({
                "error": {
                    "kind": exit::kind_name(code),
                    "message": format!("{error:#}"),
                }
            });
            println!("{value}");
        } else {
            eprintln!("snapctl: error: {error:#}");
        }
        exit::code(code)
    }
}

/// Bytes in binary units for people: `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Splits `12abc` into 12 and `abc` (`what` names the kind for errors).
pub fn number_and_unit<'t>(text: &'t str, what: &str) -> Result<(u64, &'t str), String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number = number
        .parse()
        .map_err(|_| format!("'{text}' is not {what}"))?;
    Ok((number, unit.trim()))
}

/// Parses a size such as `32MiB`, `64M`, `1g` or `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = number_and_unit(text, "a size (try 32MiB)")?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit '{other}' (use K, M or G)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// A moment for people: `2026-12-05 10:40:12 UTC`, from seconds since the
/// Unix epoch.
pub fn human_time(unix_secs: f64) -> String {
    if !(unix_secs.is_finite() && unix_secs >= 0.0) {
        return "(unknown time)".into();
    }
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs as u64);
    let text = humantime::format_rfc3339_seconds(when).to_string();
    format!("{} UTC", text.replace('T', " ").trim_end_matches('Z'))
}

/// A length of time for people: `850 ms`, `12.4 s`, `3 min 20 s`,
/// `2 h 5 min`, `3 d 4 h`.
pub fn human_duration(secs: f64) -> String {
    if !(secs.is_finite() && secs >= 0.0) {
        return "(unknown)".into();
    }
    let whole = secs.round() as u64;
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1e3)
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if whole < 3600 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else if whole < 86_400 {
        format!("{} h {} min", whole / 3600, whole % 3600 / 60)
    } else {
        format!("{} d {} h", whole / 86_400, whole % 86_400 / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }

    #[test]
    fn times_and_durations_read_like_a_person_wrote_them() {
        assert_eq!(human_time(1_796_161_306.848), "2026-12-01 21:41:46 UTC");
        assert_eq!(human_duration(0.25), "250 ms");
        assert_eq!(human_duration(12.44), "12.4 s");
        assert_eq!(human_duration(200.0), "3 min 20 s");
        assert_eq!(human_duration(7500.0), "2 h 5 min");
        assert_eq!(human_duration(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 4 h");
    }
}
