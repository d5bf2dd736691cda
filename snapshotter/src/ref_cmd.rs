//! `snapctl ref list|rm`.

use std::path::Path;
use std::process::ExitCode;

use cas::RefExpectation;
use clap::Subcommand;

use crate::exit;
use crate::output::Output;
use crate::store_cmd::open;

#[derive(Subcommand, Debug)]
pub enum RefCommand {
    /// List refs, optionally only those starting with PREFIX.
    List { prefix: Option<String> },
    /// Remove ref NAME; what only it reached becomes collectable by gc.
    Rm { name: String },
}

pub fn run(cmd: RefCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let store = open(home)?;
    match cmd {
        RefCommand::List { prefix } => {
            let refs = store.list_refs(prefix.as_deref().unwrap_or(""))?;
            let value: Vec<_> = refs
                .iter()
                .map(|(name, value)| serde_json::json!({ "name": name, "value": value }))
                .collect();
            out.print(&value, || {
                refs.iter()
                    .map(|(name, value)| {
                        format!(
                            "{}  {}  (generation {})",
                            value.root, name, value.generation
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        RefCommand::Rm { name } => {
            let old = store.delete_ref(&name, RefExpectation::Any)?;
            let value = serde_json::json!({ "removed": name, "was": old });
            out.print(&value, || format!("removed ref {name} (was {})", old.root))?;
        }
    }
    Ok(exit::code(exit::OK))
}
