//! `benches/RESULTS.md`: one section per benchmark, replaced in place when
//! that benchmark runs again, so every section keeps its own machine and
//! date.

use std::path::Path;

use anyhow::{Context, Result};

const TITLE: &str = "# Strata benchmark results\n\n\
Each section is written by one benchmark run (`benches/run.sh <name>`), with \
the machine and date it ran on. Figures are medians over the runs stated; \
every Strata figure stands beside the alternative measured in the same run.\n";

/// Replaces (or appends) section `name` of the results file.
pub fn write_section(path: &Path, name: &str, body: &str) -> Result<()> {
    let start = format!("<!-- section:{name} -->");
    let end = format!("<!-- /section:{name} -->");
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| TITLE.to_string());
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{}{}",
                &existing[..a],
                section,
                &existing[b + end.len()..]
            )
        }
        _ => format!("{}\n{}\n", existing.trim_end(), section),
    };
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

/// Median of some figures (NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("RESULTS.md");
        write_section(&path, "a", "first").unwrap();
        write_section(&path, "b", "second").unwrap();
        write_section(&path, "a", "third").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("third") && text.contains("second") && !text.contains("first"));
        assert!(text.find("third").unwrap() < text.find("second").unwrap());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }
}
