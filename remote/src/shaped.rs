//! An object store wrapped to behave like a distant one: a fixed latency
//! per request, a bandwidth per connection, and injected faults (failed,
//! throttled and slow requests). Benchmarks emulate object storage with
//! it; the fault tests drive the tier's retries with it.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use parking_lot::Mutex;

/// How requests are slowed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    /// Added to every request.
    pub latency: Duration,
    /// Bytes per second one request moves (0: unlimited).
    pub bytes_per_sec: u64,
}

/// Which requests fail: every `n`-th request counted since the store was
/// made (0: none).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Fails with a transport error.
    pub fail_one_in: u64,
    /// Fails as S3 does when throttling (503 SlowDown).
    pub throttle_one_in: u64,
    /// Is slowed by `slow_by` more.
    pub slow_one_in: u64,
    pub slow_by: Duration,
    /// Every request from this one on fails (0: none): the store is gone.
    pub fail_from: u64,
}

/// An object store with [`Shape`] and [`Faults`] applied.
pub struct ShapedStore {
    inner: Arc<dyn ObjectStore>,
    shape: Shape,
    faults: Mutex<Faults>,
    requests: AtomicU64,
    injected: AtomicU64,
}

impl fmt::Debug for ShapedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShapedStore({})", self.inner)
    }
}

impl fmt::Display for ShapedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shaped {}", self.inner)
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "shaped",
        source: what.to_string().into(),
    }
}

impl ShapedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, shape: Shape, faults: Faults) -> Arc<ShapedStore> {
        Arc::new(ShapedStore {
            inner,
            shape,
            faults: Mutex::new(faults),
            requests: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        })
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock() = faults;
    }

    /// Requests seen and faults injected so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.injected.load(Ordering::Relaxed),
        )
    }

    /// The latency, and an injected fault, for one request.
    async fn start(&self) -> object_store::Result<()> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let faults = *self.faults.lock();
        tokio::time::sleep(self.shape.latency).await;
        if faults.fail_from > 0 && n >= faults.fail_from {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(injected("connection refused (injected: the store is down)"));
        }
        if faults.fail_one_in > 0 && n % faults.fail_one_in == 0 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(injected("connection reset by peer (injected)"));
        }
        if faults.throttle_one_in > 0 && n % faults.throttle_one_in == 0 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(injected(
                "503 SlowDown: please reduce your request rate (injected)",
            ));
        }
        if faults.slow_one_in > 0 && n % faults.slow_one_in == 0 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(faults.slow_by).await;
        }
        Ok(())
    }

    fn transfer_time(shape: Shape, bytes: u64) -> Duration {
        if shape.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(bytes as f64 / shape.bytes_per_sec as f64)
    }
}

#[async_trait]
impl ObjectStore for ShapedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.start().await?;
        tokio::time::sleep(Self::transfer_time(
            self.shape,
            payload.content_length() as u64,
        ))
        .await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.start().await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(ShapedUpload {
            inner,
            shape: self.shape,
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.start().await?;
        let result = self.inner.get_opts(location, options).await?;
        let meta = result.meta.clone();
        let range = result.range.clone();
        let attributes = result.attributes.clone();
        let bytes = result.bytes().await?;
        tokio::time::sleep(Self::transfer_time(self.shape, bytes.len() as u64)).await;
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(bytes) }).boxed(),
            ),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for range in ranges {
            let options = GetOptions::new().with_range(Some(range.clone()));
            out.push(self.get_opts(location, options).await?.bytes().await?);
        }
        Ok(out)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let latency = self.shape.latency;
        let inner = self.inner.list(prefix);
        futures::stream::once(async move {
            tokio::time::sleep(latency).await;
            inner
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.start().await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.start().await?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct ShapedUpload {
    inner: Box<dyn MultipartUpload>,
    shape: Shape,
}

#[async_trait]
impl MultipartUpload for ShapedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let wait = self.shape.latency
            + ShapedStore::transfer_time(self.shape, data.content_length() as u64);
        let part = self.inner.put_part(data);
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            part.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        tokio::time::sleep(self.shape.latency).await;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}
