//! Refs: named roots. Everything a ref reaches is alive.
//!
//! Names are slash-separated paths of `[A-Za-z0-9._+@:=-]` components, such
//! as `image/debian-12` or `snapshot/01HX…`. Updates are compare-and-swap on
//! the ref's generation, so two writers cannot silently overwrite each other.

use crate::config::MAX_REF_NAME_LEN;
use crate::error::{Error, Result};
use crate::index::RefValue;

/// Checks a ref name against the naming rules.
pub fn validate_ref_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidRefName {
            name: name.chars().take(80).collect(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("a ref name cannot be empty");
    }
    if name.len() > MAX_REF_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return bad("empty path component (leading, trailing or doubled '/')");
        }
        if component == "." || component == ".." {
            return bad("'.' and '..' are not allowed as components");
        }
        if let Some(c) = component
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._+@:=-".contains(*c)))
        {
            return bad(&format!("character {c:?} is not allowed"));
        }
    }
    Ok(())
}

/// What a ref update expects to find, for compare-and-swap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefExpectation {
    /// Whatever is there (or nothing).
    Any,
    /// The ref must not exist yet.
    Absent,
    /// The ref must exist at exactly this generation.
    Generation(u64),
}

impl RefExpectation {
    pub(crate) fn check(&self, name: &str, current: Option<&RefValue>) -> Result<()> {
        let ok = match (self, current) {
            (RefExpectation::Any, _) => true,
            (RefExpectation::Absent, None) => true,
            (RefExpectation::Generation(g), Some(c)) => c.generation == *g,
            _ => false,
        };
        if ok {
            return Ok(());
        }
        let expected = match self {
            RefExpectation::Any => "anything".to_string(),
            RefExpectation::Absent => "no ref".to_string(),
            RefExpectation::Generation(g) => format!("generation {g}"),
        };
        let found = match current {
            None => "no ref".to_string(),
            Some(c) => format!("generation {} ({})", c.generation, c.root.short()),
        };
        Err(Error::RefConflict {
            name: name.to_string(),
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_follow_the_rules() {
        for good in [
            "image/debian-12",
            "a",
            "snapshot/2026-11-23T10:00:00Z",
            "vol/x@v1+2=3",
        ] {
            validate_ref_name(good).unwrap();
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            "/abs",
            "trail/",
            "a//b",
            "a/../b",
            "./a",
            "sp ace",
            "nul\0",
            "é",
            long.as_str(),
        ] {
            assert!(validate_ref_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
