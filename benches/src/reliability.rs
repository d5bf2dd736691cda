//! The long reliability run's report: `benches/run.sh reliability` runs the
//! power-cut suites with many cuts and hands their output here; each
//! suite's `RESULT` line becomes a row of the `reliability` section of
//! RESULTS.md.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::machine;
use crate::report::write_section;

#[derive(clap::Args)]
pub struct Args {
    /// The suites' output (their `RESULT` lines are read).
    #[arg(long)]
    log: PathBuf,
    /// Wall-clock seconds the suites took.
    #[arg(long)]
    seconds: Option<u64>,
    /// The results file to update.
    #[arg(long, default_value = "benches/RESULTS.md")]
    results: PathBuf,
}

/// One suite's figures: `RESULT name key=value...`.
struct Row {
    suite: String,
    figures: Vec<(String, String)>,
}

fn parse(log: &str) -> Vec<Row> {
    log.lines()
        .filter_map(|line| line.trim().strip_prefix("RESULT "))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let suite = words.next().unwrap_or("?").to_string();
            let figures = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Row { suite, figures }
        })
        .collect()
}

fn figure<'r>(row: &'r Row, key: &str) -> Option<&'r str> {
    row.figures
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Writes the section from the suites' output.
pub fn run(args: Args) -> Result<()> {
    let log = std::fs::read_to_string(&args.log)
        .with_context(|| format!("reading {}", args.log.display()))?;
    let rows = parse(&log);
    if rows.is_empty() {
        bail!("no RESULT line in {}", args.log.display());
    }
    let cuts: u64 = rows
        .iter()
        .filter_map(|r| figure(r, "cuts")?.parse::<u64>().ok())
        .sum();
    let lost: u64 = rows
        .iter()
        .filter_map(|r| figure(r, "lost_acknowledged")?.parse::<u64>().ok())
        .sum();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "## Reliability: power cuts (`benches/run.sh reliability`)\n"
    );
    let _ = writeln!(body, "{}\n", machine::describe(std::path::Path::new(".")));
    let _ = writeln!(
        body,
        "Every suite runs its workload in a child process on the power-cut \
         filesystem (`fixtures::powercut`), cuts the power at a random moment \
         (even rounds lose everything unsynced; odd rounds keep a random prefix \
         of it and tear the last write), reopens what survived and checks it \
         against what was acknowledged. See RELIABILITY.md for what each suite \
         promises.\n"
    );
    let _ = writeln!(
        body,
        "**{cuts} power cuts, {lost} acknowledged operations lost**{}.\n",
        args.seconds
            .map(|s| format!(" ({} min {} s)", s / 60, s % 60))
            .unwrap_or_default()
    );
    let _ = writeln!(body, "| suite | figures |\n|---|---|");
    for row in &rows {
        let figures: Vec<String> = row
            .figures
            .iter()
            .map(|(k, v)| format!("{} {v}", k.replace('_', " ")))
            .collect();
        let _ = writeln!(body, "| {} | {} |", row.suite, figures.join(", "));
    }
    write_section(&args.results, "reliability", &body)?;
    println!("{body}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_become_rows() {
        let rows = parse("noise\nRESULT cas-powercut mode=x cuts=3 lost_acknowledged=0\n");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].suite, "cas-powercut");
        assert_eq!(figure(&rows[0], "cuts"), Some("3"));
        assert_eq!(figure(&rows[0], "missing"), None);
    }
}
