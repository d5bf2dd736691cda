//! The bucket: `object_store` behind a blocking facade (the rest of Strata
//! is threads, not tasks), with request counts.
//!
//! Each request is retried by the store's HTTP client (exponential backoff
//! within `retry_secs`); what still fails is reported with the object's
//! name.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use crate::error::{Error, Result};

/// Requests made and bytes moved since the bucket was opened.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub retries: AtomicU64,
}

/// A snapshot of [`RequestStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCounts {
    pub puts: u64,
    pub gets: u64,
    pub lists: u64,
    pub deletes: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Requests repeated after a transient failure.
    #[serde(default)]
    pub retries: u64,
}

impl RequestStats {
    /// The counts so far.
    pub fn counts(&self) -> RequestCounts {
        RequestCounts {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// An object store and the runtime its requests run on.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    stats: RequestStats,
    name: String,
    /// How long a failing request is retried.
    retry_for: Duration,
}

/// Whether a failed request may succeed if repeated: a transport error or
/// a throttled request, not an answer about the object.
fn transient(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::Generic { .. })
}

impl Bucket {
    /// Wraps `store`, called `name` in messages; a request failing with a
    /// transport error or throttled is repeated with exponential backoff
    /// for up to `retry_for`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        name: impl Into<String>,
        retry_for: Duration,
    ) -> Result<Arc<Bucket>> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-io")
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("starting the I/O runtime: {e}")))?;
        Ok(Arc::new(Bucket {
            store,
            runtime,
            stats: RequestStats::default(),
            name: name.into(),
            retry_for,
        }))
    }

    /// The name given at opening (the bucket URL).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests made so far.
    pub fn counts(&self) -> RequestCounts {
        self.stats.counts()
    }

    /// Runs `future` on the bucket's runtime and waits for it. Callable
    /// from any thread, a thread of another Tokio runtime included (the
    /// 9P server's): the future runs on this bucket's own workers while
    /// the caller's thread waits.
    pub fn run<T, F>(&self, future: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(future);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| Error::Config("the remote tier's I/O runtime stopped".into()))?
    }

    /// Starts `future` on the bucket's runtime.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    /// Runs `op` until it succeeds, fails for good, or `retry_for` has
    /// passed (backoff 50 ms doubling to 2 s).
    async fn retrying<T, F, Fut>(&self, mut op: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(50);
        loop {
            match op().await {
                Err(e) if transient(&e) && Instant::now() + backoff < deadline => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, ?backoff, "retrying a bucket request");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// [`Bucket::put_new`], except that an object already there with
    /// exactly `bytes` counts as created (a repeated request whose first
    /// answer was lost).
    pub async fn put_new_or_same(&self, path: &Path, bytes: Bytes) -> Result<bool> {
        if self.put_new(path, bytes.clone()).await? {
            return Ok(true);
        }
        Ok(self.get(path).await?.is_some_and(|found| found == bytes))
    }

    /// Writes `bytes` at `path` unless an object is there: `true` if this
    /// call created it, `false` if it existed (nothing was written).
    pub async fn put_new(&self, path: &Path, bytes: Bytes) -> Result<bool> {
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_up
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let put = self.retrying(|| {
            self.store.put_opts(
                path,
                PutPayload::from(bytes.clone()),
                PutMode::Create.into(),
            )
        });
        match put.await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::bucket(format!("writing {path}"), e)),
        }
    }

    /// Writes `bytes` at `path` (replacing any object there), in parts of
    /// `part_bytes` uploaded at once when it is at least `multipart_bytes`
    /// long.
    pub async fn put(
        &self,
        path: &Path,
        bytes: Bytes,
        multipart_bytes: u64,
        part_bytes: u64,
    ) -> Result<()> {
        let len = bytes.len() as u64;
        self.stats.bytes_up.fetch_add(len, Ordering::Relaxed);
        let context = || format!("writing {path}");
        if len < multipart_bytes {
            self.stats.puts.fetch_add(1, Ordering::Relaxed);
            self.retrying(|| self.store.put(path, PutPayload::from(bytes.clone())))
                .await
                .map_err(|e| Error::bucket(context(), e))?;
            return Ok(());
        }
        // A failed multipart upload is started over as a whole.
        self.retrying(|| self.put_in_parts(path, bytes.clone(), part_bytes))
            .await
            .map_err(|e| Error::bucket(context(), e))
    }

    async fn put_in_parts(
        &self,
        path: &Path,
        bytes: Bytes,
        part_bytes: u64,
    ) -> object_store::Result<()> {
        let mut upload = self.store.put_multipart(path).await?;
        let part = part_bytes.max(5 << 20) as usize;
        let mut parts = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            // Parts of `part` bytes (at least S3's 5 MiB); the last may
            // be shorter.
            let end = (at + part).min(bytes.len());
            self.stats.puts.fetch_add(1, Ordering::Relaxed);
            parts.push(upload.put_part(PutPayload::from(bytes.slice(at..end))));
            at = end;
        }
        if let Err(e) = futures::future::try_join_all(parts).await {
            let _ = upload.abort().await;
            return Err(e);
        }
        upload.complete().await?;
        Ok(())
    }

    /// The object at `path`, or `None`.
    pub async fn get(&self, path: &Path) -> Result<Option<Bytes>> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let got = self.retrying(|| async { self.store.get(path).await?.bytes().await });
        let bytes = match got.await {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::bucket(format!("reading {path}"), e)),
        };
        self.stats
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(Some(bytes))
    }

    /// Bytes `range` of the object at `path`.
    pub async fn get_range(&self, path: &Path, range: Range<u64>) -> Result<Bytes> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let want = range.end - range.start;
        let bytes = self
            .retrying(|| self.store.get_range(path, range.clone()))
            .await
            .map_err(|e| {
                Error::bucket(
                    format!("reading bytes {}..{} of {path}", range.start, range.end),
                    e,
                )
            })?;
        self.stats
            .bytes_down
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 != want {
            return Err(Error::Corrupt {
                object: path.to_string(),
                reason: format!(
                    "asked for {want} bytes at {}, got {}",
                    range.start,
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }

    /// Every object under `prefix`, at any depth.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        self.retrying(|| self.store.list(Some(prefix)).try_collect())
            .await
            .map_err(|e| Error::bucket(format!("listing {prefix}/"), e))
    }

    /// The objects directly under `prefix` (not in deeper "directories").
    pub async fn list_here(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        self.retrying(|| self.store.list_with_delimiter(Some(prefix)))
            .await
            .map(|listing| listing.objects)
            .map_err(|e| Error::bucket(format!("listing {prefix}/"), e))
    }

    /// Deletes the object at `path`; a missing one is no error.
    pub async fn delete(&self, path: &Path) -> Result<()> {
        self.stats.deletes.fetch_add(1, Ordering::Relaxed);
        match self.retrying(|| self.store.delete(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::bucket(format!("deleting {path}"), e)),
        }
    }
}
