//! The remote tier in the daemon: its configuration at start, and push,
//! pull, list and status.

use super::*;

/// Ref prefixes that may be pushed and pulled: what a node shares.
const SHARED_PREFIXES: [&str; 2] = [
    layerfs::image::IMAGE_REF_PREFIX,
    crate::snapshots::SNAPSHOT_REF_PREFIX,
];

/// The remote options of `snapctl daemon`.
#[derive(clap::Args, Debug, Default)]
pub struct RemoteArgs {
    /// The bucket shared with other nodes (`s3://BUCKET/PREFIX`,
    /// `gs://…`, `az://…`, `file:///DIR`); overrides HOME/remote.json.
    /// Credentials come from the usual environment variables
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, …).
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// A bucket option by object_store's name (`endpoint=http://…`,
    /// `region=…`, `allow_http=true`); repeatable, added to the file's.
    #[arg(long = "remote-option", value_name = "KEY=VALUE")]
    pub remote_options: Vec<String>,
    /// Bound on the disk cache of fetched chunks (HOME/remote-cache).
    #[arg(long, value_parser = crate::output::parse_size, value_name = "SIZE")]
    pub remote_cache: Option<u64>,
}

/// The configuration from `HOME/remote.json` and the flags; `None` when
/// neither names a bucket.
pub fn remote_config(home: &Path, args: &RemoteArgs) -> anyhow::Result<Option<RemoteConfig>> {
    let mut config = RemoteConfig::load(home)?;
    if let Some(url) = &args.remote {
        match &mut config {
            Some(config) => config.url = url.clone(),
            None => config = Some(RemoteConfig::new(url.clone())),
        }
    }
    let Some(mut config) = config else {
        if !args.remote_options.is_empty() || args.remote_cache.is_some() {
            bail!("--remote-option and --remote-cache need a bucket: --remote URL or HOME/{CONFIG_FILE}");
        }
        return Ok(None);
    };
    for option in &args.remote_options {
        let Some((key, value)) = option.split_once('=') else {
            bail!("--remote-option takes KEY=VALUE, got '{option}'");
        };
        config.options.insert(key.to_string(), value.to_string());
    }
    if let Some(bytes) = args.remote_cache {
        config.cache_bytes = bytes;
    }
    config.validate()?;
    Ok(Some(config))
}

/// Where the disk cache of a node's fetched chunks lives.
pub fn cache_dir(home: &Path) -> PathBuf {
    home.join("remote-cache")
}

fn check_shared(name: &str) -> anyhow::Result<()> {
    cas::validate_ref_name(name)?;
    if !SHARED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(anyhow!(InvalidInput(format!(
            "'{name}' is not shared with other nodes: push and pull images (image/NAME) and snapshots (snapshot/ID)"
        ))));
    }
    Ok(())
}

impl Daemon {
    pub(super) fn remote(&self) -> anyhow::Result<&Remote> {
        self.remote.as_ref().ok_or_else(|| {
            anyhow!(InvalidInput(format!(
                "this node has no bucket: start the daemon with --remote URL or write HOME/{CONFIG_FILE}"
            )))
        })
    }

    pub(super) fn remote_push(&self, refs: &[String]) -> anyhow::Result<remote::PushReport> {
        let remote = self.remote()?;
        for name in refs {
            check_shared(name)?;
            // A snapshot still being stored is pushed once it is durable.
            if let Some(id) = name.strip_prefix(crate::snapshots::SNAPSHOT_REF_PREFIX) {
                let info = self.catalog.wait(id)?;
                if info.state != crate::api::SnapshotState::Durable {
                    bail!(
                        "snapshot {id} is {:?}, not durable: it cannot be pushed",
                        info.state
                    );
                }
            }
        }
        Ok(remote.push(&self.store, refs)?)
    }

    pub(super) fn remote_pull(&self, refs: &[String]) -> anyhow::Result<Vec<RemoteRef>> {
        let remote = self.remote()?;
        for name in refs {
            check_shared(name)?;
        }
        Ok(remote.pull(&self.store, refs)?)
    }

    pub(super) fn remote_unpin(&self, refs: &[String]) -> anyhow::Result<Vec<String>> {
        let remote = self.remote()?;
        for name in refs {
            check_shared(name)?;
        }
        Ok(remote.unpin(refs)?)
    }

    pub(super) fn remote_list(&self, prefix: &str) -> anyhow::Result<Vec<RemoteRef>> {
        Ok(self.remote()?.list_refs(prefix)?)
    }

    pub(super) fn remote_gc(&self) -> anyhow::Result<remote::RemoteGcReport> {
        Ok(self.remote()?.gc(&self.store)?)
    }

    pub(super) fn remote_status(&self) -> anyhow::Result<RemoteStatus> {
        let remote = self.remote()?;
        let (known_chunks, known_packs) = remote.known();
        Ok(RemoteStatus {
            url: remote.config().url.clone(),
            cache_dir: cache_dir(&self.home),
            cache_used_bytes: remote.cache_used_bytes(),
            cache_limit_bytes: remote.config().cache_bytes,
            known_chunks,
            known_packs,
            requests: remote.counts(),
        })
    }
}
