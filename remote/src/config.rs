//! Where the bucket is and how the tier behaves: `HOME/remote.json`, flags
//! on top, credentials from the usual environment variables.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the configuration file in a node's data directory.
pub const CONFIG_FILE: &str = "remote.json";

/// The remote tier's configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// The bucket, with an optional prefix: `s3://BUCKET/PREFIX`,
    /// `gs://BUCKET/PREFIX`, `az://CONTAINER/PREFIX`, `file:///DIR`, or
    /// `memory://NAME` (one process's memory; for tests).
    pub url: String,
    /// Backend options, by `object_store`'s names (for S3: `endpoint`,
    /// `region`, `allow_http`, `access_key_id`, …). Credentials are better
    /// left to the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `GOOGLE_SERVICE_ACCOUNT`,
    /// `AZURE_STORAGE_ACCOUNT_KEY`, …), which is read as well.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Bound on the disk cache of fetched pack bytes.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Size at which an upload pack is closed.
    #[serde(default = "default_pack_bytes")]
    pub pack_bytes: u64,
    /// Packs at least this large are uploaded in parts (in parallel).
    #[serde(default = "default_multipart_bytes")]
    pub multipart_bytes: u64,
    /// Requests in flight at once for one push or one read-ahead.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Longest a request is retried (with exponential backoff) before its
    /// error is reported, in seconds.
    #[serde(default = "default_retry_secs")]
    pub retry_secs: u64,
    /// How long a collection waits between condemning packs and deleting
    /// them; a push that takes more than half of it is refused before its
    /// refs are written. Every node of a bucket must use the same value.
    #[serde(default = "default_gc_grace_ms")]
    pub gc_grace_ms: u64,
}

fn default_cache_bytes() -> u64 {
    8 << 30
}
fn default_pack_bytes() -> u64 {
    32 << 20
}
fn default_multipart_bytes() -> u64 {
    64 << 20
}
fn default_parallel() -> usize {
    8
}
fn default_retry_secs() -> u64 {
    30
}
fn default_gc_grace_ms() -> u64 {
    3_600_000
}

impl RemoteConfig {
    /// A configuration of `url` with every default.
    pub fn new(url: impl Into<String>) -> RemoteConfig {
        RemoteConfig {
            url: url.into(),
            options: BTreeMap::new(),
            cache_bytes: default_cache_bytes(),
            pack_bytes: default_pack_bytes(),
            multipart_bytes: default_multipart_bytes(),
            parallel: default_parallel(),
            retry_secs: default_retry_secs(),
            gc_grace_ms: default_gc_grace_ms(),
        }
    }

    /// Reads `HOME/remote.json`; `None` when there is none.
    pub fn load(home: &Path) -> Result<Option<RemoteConfig>> {
        let path = home.join(CONFIG_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Config(format!("reading {}: {e}", path.display()))),
        };
        let config: RemoteConfig = serde_json::from_slice(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(Some(config))
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if self.pack_bytes < (1 << 20) || self.pack_bytes > (1 << 30) {
            return Err(Error::Config(
                "pack_bytes must be within 1 MiB..1 GiB".into(),
            ));
        }
        if self.multipart_bytes < (5 << 20) {
            return Err(Error::Config(
                "multipart_bytes must be at least 5 MiB (S3's smallest part)".into(),
            ));
        }
        if self.parallel == 0 || self.parallel > 256 {
            return Err(Error::Config("parallel must be within 1..=256".into()));
        }
        if self.cache_bytes < (64 << 20) {
            return Err(Error::Config("cache_bytes must be at least 64 MiB".into()));
        }
        url::Url::parse(&self.url)
            .map_err(|e| Error::Config(format!("bucket URL '{}': {e}", self.url)))?;
        Ok(())
    }

    /// Opens the object store the URL names, wrapped to its prefix.
    pub fn open_store(&self) -> Result<Arc<dyn ObjectStore>> {
        self.validate()?;
        let url = url::Url::parse(&self.url)
            .map_err(|e| Error::Config(format!("bucket URL '{}': {e}", self.url)))?;
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            // The bucket repeats what still fails, within `retry_secs`.
            max_retries: 3,
            retry_timeout: Duration::from_secs(self.retry_secs.min(10)),
        };
        let bad_option = |key: &str, e: object_store::Error| {
            Error::Config(format!("option '{key}' for {}: {e}", url.scheme()))
        };
        let bucket_root = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
        let prefix = url.path().trim_matches('/').to_string();
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_url(bucket_root)
                    .with_retry(retry);
                for (key, value) in &self.options {
                    let key_parsed: AmazonS3ConfigKey =
                        key.parse().map_err(|e| bad_option(key, e))?;
                    builder = builder.with_config(key_parsed, value);
                }
                Arc::new(builder.build().map_err(|e| Error::Config(e.to_string()))?)
            }
            "gs" => {
                let mut builder = GoogleCloudStorageBuilder::from_env()
                    .with_url(bucket_root)
                    .with_retry(retry);
                for (key, value) in &self.options {
                    let key_parsed: GoogleConfigKey =
                        key.parse().map_err(|e| bad_option(key, e))?;
                    builder = builder.with_config(key_parsed, value);
                }
                Arc::new(builder.build().map_err(|e| Error::Config(e.to_string()))?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_url(bucket_root)
                    .with_retry(retry);
                for (key, value) in &self.options {
                    let key_parsed: AzureConfigKey = key.parse().map_err(|e| bad_option(key, e))?;
                    builder = builder.with_config(key_parsed, value);
                }
                Arc::new(builder.build().map_err(|e| Error::Config(e.to_string()))?)
            }
            "file" => {
                let dir = url.path();
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Config(format!("creating {dir}: {e}")))?;
                return Ok(Arc::new(
                    LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| Error::Config(format!("{dir}: {e}")))?,
                ));
            }
            "memory" => return Ok(memory_bucket(url.host_str().unwrap_or(""))),
            other => {
                return Err(Error::Config(format!(
                    "unknown bucket scheme '{other}' (s3, gs, az, file or memory)"
                )))
            }
        };
        if prefix.is_empty() {
            Ok(store)
        } else {
            Ok(Arc::new(PrefixStore::new(store, prefix.as_str())))
        }
    }
}

/// The in-memory bucket called `name`, shared by everything in this
/// process that opens `memory://NAME` (its conditional writes are atomic,
/// which race tests need).
pub fn memory_bucket(name: &str) -> Arc<dyn ObjectStore> {
    static BUCKETS: OnceLock<parking_lot::Mutex<BTreeMap<String, Arc<InMemory>>>> = OnceLock::new();
    let buckets = BUCKETS.get_or_init(Default::default);
    let bucket = buckets
        .lock()
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone();
    bucket
}
