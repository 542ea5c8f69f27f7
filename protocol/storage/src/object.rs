//! Object storage: `s3://bucket/key` paths through the `object_store` crate, behind the
//! same blocking `Read + Seek` (and Parquet `ChunkReader`) interface as local files, so
//! that every format reads a split the same way from either.
//!
//! Credentials and the endpoint come from the process's environment as the AWS tools
//! read it (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`; else the instance's or web
//! identity's role): the operator's, given to the driver and executor processes, never a
//! tenant's. Reads are ranged GETs of at most [`CHUNK`] bytes, so a split of a large
//! object costs its own bytes, not the object's.

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// Bytes one ranged GET of a sequential read asks for at most: a read starts with
/// [`FIRST_CHUNK`] (a header, a footer) and doubles while it goes on in order.
pub const CHUNK: u64 = 8 << 20;
pub const FIRST_CHUNK: u64 = 256 << 10;

const SCHEME: &str = "s3://";

/// Whether `path` names an object (`s3://bucket/key`) rather than a local file.
pub fn is_url(path: &str) -> bool {
    path.starts_with(SCHEME)
}

fn invalid(url: &str, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{url} is not a usable object URL: {why}"),
    )
}

/// `s3://bucket/a/b` → (`bucket`, `a/b`). Empty, `.` and `..` segments are refused: an
/// object path means what it says, and a prefix check on it cannot be walked out of.
pub fn parse(url: &str) -> std::io::Result<(String, String)> {
    let rest = url
        .strip_prefix(SCHEME)
        .ok_or_else(|| invalid(url, "it does not start with s3://"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(invalid(url, "the bucket name is not valid"));
    }
    let key = key.trim_end_matches('/');
    if !key.is_empty()
        && key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(invalid(url, "it has an empty, `.` or `..` segment"));
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// The object key of `url`, as the store spells it (listing gives keys back the same way).
fn key(url: &str, key: &str) -> std::io::Result<Key> {
    Key::parse(key).map_err(|e| invalid(url, &e.to_string()))
}

/// The runtime object store requests run on: its own, so that a blocking read works
/// from any thread, inside an async runtime or not.
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flint-storage")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| std::io::Error::other(format!("starting the object storage runtime: {e}")))
}

/// Runs `f` on the storage runtime and waits for it; a request that ends without an
/// answer (it panicked inside `object_store`) is an error, not a panic of the host.
fn block<T: Send + 'static>(
    f: impl Future<Output = std::io::Result<T>> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| std::io::Error::other("an object storage request ended without an answer"))?
}

/// The store of `bucket`, made once per process from the environment.
fn store(url: &str, bucket: &str) -> std::io::Result<Arc<dyn ObjectStore>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = stores.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = stores.get(bucket) {
        return Ok(s.clone());
    }
    let retry = object_store::RetryConfig {
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let profile =
        crate::aws_profile::load(env).map_err(|e| std::io::Error::other(format!("{url}: {e}")))?;
    if let Some(p) = profile {
        if env("AWS_ACCESS_KEY_ID").is_none()
            && let Some(why) = &p.refused
        {
            return Err(std::io::Error::other(format!("{url}: {why}")));
        }
        builder = with_profile(builder, p, env);
    }
    let s3 = builder
        .build()
        .map_err(|e| std::io::Error::other(format!("{url}: {e}")))?;
    let s: Arc<dyn ObjectStore> = Arc::new(s3);
    stores.insert(bucket.to_string(), s.clone());
    Ok(s)
}

/// What a profile gives that the environment does not set (the environment wins, as
/// in the AWS SDKs).
fn with_profile(
    mut b: AmazonS3Builder,
    p: crate::aws_profile::Profile,
    env: impl Fn(&str) -> Option<String>,
) -> AmazonS3Builder {
    if env("AWS_ACCESS_KEY_ID").is_none()
        && let (Some(id), Some(secret)) = (p.access_key_id, p.secret_access_key)
    {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(token) = p.session_token {
            b = b.with_token(token);
        }
    }
    if env("AWS_REGION").is_none()
        && env("AWS_DEFAULT_REGION").is_none()
        && let Some(region) = p.region
    {
        b = b.with_region(region);
    }
    if env("AWS_ENDPOINT_URL").is_none()
        && env("AWS_ENDPOINT").is_none()
        && let Some(endpoint) = p.endpoint_url
    {
        // The operator named a plain-HTTP endpoint (a local S3-protocol server).
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        b = b.with_endpoint(endpoint);
    }
    b
}

/// An object-store failure as an IO error naming the URL, of the kind it is (not found,
/// denied, …) so that callers tell a missing input from a failing store.
fn error(url: &str, e: object_store::Error) -> std::io::Error {
    let message = format!("{url}: {e}");
    std::io::Error::new(std::io::Error::from(e).kind(), message)
}

/// An object's size, or `None` when there is none at `url`.
pub fn size(url: &str) -> std::io::Result<Option<u64>> {
    let (bucket, key) = parse(url)?;
    if key.is_empty() {
        return Ok(None);
    }
    let s = store(url, &bucket)?;
    let k = self::key(url, &key)?;
    let u = url.to_string();
    block(async move {
        match s.head(&k).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(&u, e)),
        }
    })
}

/// The objects below `url` taken as a directory (`url/…`), as (URL, size), at most
/// `max` of them (an error past that: `max + 1` entries tell the caller).
pub fn list(url: &str, max: usize) -> std::io::Result<Listing> {
    let (bucket, key) = parse(url)?;
    let s = store(url, &bucket)?;
    let prefix = if key.is_empty() {
        None
    } else {
        Some(self::key(url, &key)?)
    };
    let u = url.to_string();
    block(async move {
        let mut stream = s.list(prefix.as_ref());
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            let m = m.map_err(|e| error(&u, e))?;
            out.push((format!("{SCHEME}{bucket}/{}", m.location), m.size));
            if out.len() > max {
                break;
            }
        }
        Ok(out)
    })
}

/// Objects as (URL, size).
pub type Listing = Vec<(String, u64)>;

/// The objects and the common prefixes (subdirectories) right below `url` taken as a
/// directory, as URLs; one LIST request (at most 1000 entries, as S3 answers one page).
pub fn list_dir(url: &str) -> std::io::Result<(Listing, Vec<String>)> {
    let (bucket, key) = parse(url)?;
    let s = store(url, &bucket)?;
    let prefix = if key.is_empty() {
        None
    } else {
        Some(self::key(url, &key)?)
    };
    let u = url.to_string();
    block(async move {
        let r = s
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| error(&u, e))?;
        let objects = r
            .objects
            .into_iter()
            .map(|m| (format!("{SCHEME}{bucket}/{}", m.location), m.size))
            .collect();
        let prefixes = r
            .common_prefixes
            .into_iter()
            .map(|p| format!("{SCHEME}{bucket}/{p}"))
            .collect();
        Ok((objects, prefixes))
    })
}

/// The whole object at `url`, or `None` when there is none; an error past `max` bytes.
pub fn read(url: &str, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let Some(len) = size(url)? else {
        return Ok(None);
    };
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{url}: {len} bytes, over the {max} this reader accepts"),
        ));
    }
    Ok(Some(ObjectReader::open(url)?.range(0, len)?.to_vec()))
}

/// Writes `bytes` as the object at `url`, in one PUT: readers see all of it or none.
pub fn put(url: &str, bytes: Vec<u8>) -> std::io::Result<()> {
    let (bucket, key) = parse(url)?;
    let s = store(url, &bucket)?;
    let k = self::key(url, &key)?;
    let u = url.to_string();
    block(async move {
        s.put(&k, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| error(&u, e))
    })
}

/// Bytes of each part of a multipart upload: over S3's 5 MiB minimum, 10,000 of them
/// make an object of 80 GiB.
pub const PART: u64 = 8 << 20;

/// Parts of one upload in flight at once (each [`PART`] bytes of memory).
const PARTS_IN_FLIGHT: usize = 2;

/// Uploads the local file `local` as the object at `url`: one PUT up to [`PART`] bytes,
/// else a multipart upload of [`PART`]-sized parts, [`PARTS_IN_FLIGHT`] at a time. The
/// object appears only when the upload completes; a failed upload is aborted (one killed
/// with its process stays an invisible incomplete upload until the bucket's lifecycle
/// rule removes it). Returns the bytes uploaded.
pub fn upload_file(local: &Path, url: &str) -> std::io::Result<u64> {
    let (bucket, key) = parse(url)?;
    if key.is_empty() {
        return Err(invalid(url, "it names a bucket, not an object"));
    }
    let mut f = File::open(local)?;
    let len = f.metadata()?.len();
    if len <= PART {
        let mut bytes = Vec::with_capacity(len as usize);
        f.read_to_end(&mut bytes)?;
        put(url, bytes)?;
        return Ok(len);
    }
    let s = store(url, &bucket)?;
    let k = self::key(url, &key)?;
    let u = url.to_string();
    let mut upload = block(async move { s.put_multipart(&k).await.map_err(|e| error(&u, e)) })?;
    let parts = (|| {
        let mut in_flight = std::collections::VecDeque::new();
        let wait = |h: tokio::task::JoinHandle<object_store::Result<()>>| {
            let u = url.to_string();
            block(async move {
                h.await
                    .map_err(|_| std::io::Error::other(format!("{u}: a part upload ended")))?
                    .map_err(|e| error(&u, e))
            })
        };
        let mut left = len;
        while left > 0 {
            let n = left.min(PART);
            let mut part = vec![0; n as usize];
            f.read_exact(&mut part)?;
            left -= n;
            if in_flight.len() >= PARTS_IN_FLIGHT
                && let Some(h) = in_flight.pop_front()
            {
                wait(h)?;
            }
            in_flight.push_back(runtime()?.spawn(upload.put_part(part.into())));
        }
        in_flight.into_iter().try_for_each(wait)
    })();
    let u = url.to_string();
    block(async move {
        match parts {
            Ok(()) => match upload.complete().await {
                Ok(_) => Ok(len),
                Err(e) => {
                    let _ = upload.abort().await;
                    Err(error(&u, e))
                }
            },
            Err(e) => {
                let _ = upload.abort().await;
                Err(e)
            }
        }
    })
}

/// Copies objects within one bucket (server side: no bytes pass through this process),
/// `(from, to)` URLs, eight at a time.
pub fn copy_all(pairs: Vec<(String, String)>) -> std::io::Result<()> {
    let Some((first, _)) = pairs.first() else {
        return Ok(());
    };
    let (bucket, _) = parse(first)?;
    let s = store(first, &bucket)?;
    let mut keys = Vec::with_capacity(pairs.len());
    for (from, to) in &pairs {
        let ((fb, fk), (tb, tk)) = (parse(from)?, parse(to)?);
        if fb != bucket || tb != bucket {
            return Err(invalid(to, "a copy stays within one bucket"));
        }
        keys.push((self::key(from, &fk)?, self::key(to, &tk)?, to.clone()));
    }
    block(async move {
        let mut copies = futures::stream::iter(keys.into_iter().map(|(from, to, url)| {
            let s = s.clone();
            async move { s.copy(&from, &to).await.map_err(|e| error(&url, e)) }
        }))
        .buffer_unordered(8);
        while let Some(r) = copies.next().await {
            r?;
        }
        Ok(())
    })
}

/// Deletes the objects at `urls` (one bucket); ones already gone are no error.
pub fn delete_all(urls: &[String]) -> std::io::Result<()> {
    let Some(first) = urls.first() else {
        return Ok(());
    };
    let (bucket, _) = parse(first)?;
    let s = store(first, &bucket)?;
    let mut keys = Vec::with_capacity(urls.len());
    for u in urls {
        let (b, k) = parse(u)?;
        if b != bucket {
            return Err(invalid(u, "a delete stays within one bucket"));
        }
        keys.push(Ok(self::key(u, &k)?));
    }
    let u = first.clone();
    block(async move {
        let mut done = s.delete_stream(futures::stream::iter(keys).boxed());
        while let Some(r) = done.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(error(&u, e)),
            }
        }
        Ok(())
    })
}

/// A blocking, seekable reader of one object by ranged GETs.
pub struct ObjectReader {
    url: String,
    store: Arc<dyn ObjectStore>,
    key: Key,
    len: u64,
    pos: u64,
    /// Bytes fetched, starting at `buf_at`.
    buf: Bytes,
    buf_at: u64,
    /// Bytes the next GET asks for.
    chunk: u64,
}

impl ObjectReader {
    pub fn open(url: &str) -> std::io::Result<ObjectReader> {
        let (bucket, key) = parse(url)?;
        let len = size(url)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{url}: no such object"),
            )
        })?;
        Ok(ObjectReader {
            url: url.to_string(),
            store: store(url, &bucket)?,
            key: self::key(url, &key)?,
            len,
            pos: 0,
            buf: Bytes::new(),
            buf_at: 0,
            chunk: FIRST_CHUNK,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `[start, start + len)` of the object (fewer at its end).
    pub fn range(&self, start: u64, len: u64) -> std::io::Result<Bytes> {
        let end = start.saturating_add(len).min(self.len);
        if start >= end {
            return Ok(Bytes::new());
        }
        let (s, key, url) = (self.store.clone(), self.key.clone(), self.url.clone());
        block(async move {
            s.get_range(&key, start..end)
                .await
                .map_err(|e| error(&url, e))
        })
    }

    /// Another reader of the same object, at `pos`.
    fn at(&self, pos: u64) -> ObjectReader {
        ObjectReader {
            url: self.url.clone(),
            store: self.store.clone(),
            key: self.key.clone(),
            len: self.len,
            pos,
            buf: Bytes::new(),
            buf_at: 0,
            chunk: FIRST_CHUNK,
        }
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let buffered = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf.len() as u64;
        if !buffered {
            let in_order = !self.buf.is_empty() && self.pos == self.buf_at + self.buf.len() as u64;
            self.chunk = if in_order {
                (self.chunk * 2).min(CHUNK)
            } else {
                FIRST_CHUNK
            };
            self.buf = self.range(self.pos, self.chunk)?;
            self.buf_at = self.pos;
            if self.buf.is_empty() {
                return Ok(0); // the object shrank since it was opened
            }
        }
        let from = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{}: seek before the start", self.url),
            )
        })?;
        Ok(self.pos)
    }
}

/// An input file, local or an object: what every reader of a split opens.
pub enum Input {
    Local(File),
    Object(ObjectReader, Mutex<Prefetch>),
}

/// Byte ranges of an object a reader said it will read whole (a Parquet row group's
/// column chunks), by group: the first read inside a group fetches all its ranges at
/// once, in parallel, and the group before it is dropped. Without it a Parquet reader
/// makes two requests per page.
#[derive(Default)]
pub struct Prefetch {
    /// (group, range), in the order given.
    planned: Vec<(usize, std::ops::Range<u64>)>,
    /// The fetched ranges of the current group: (start, bytes).
    fetched: Vec<(u64, Bytes)>,
    group: Option<usize>,
}

/// Bytes one group of prefetched ranges may hold; a larger group is read as it comes.
pub const MAX_PREFETCH: u64 = 256 << 20;

/// Opens `path`: an `s3://` URL as an object, anything else as a local file.
pub fn open(path: &Path) -> std::io::Result<Input> {
    match path.to_str() {
        Some(p) if is_url(p) => Ok(Input::Object(
            ObjectReader::open(p)?,
            Mutex::new(Prefetch::default()),
        )),
        _ => Ok(Input::Local(File::open(path)?)),
    }
}

impl Input {
    /// Says which byte ranges will be read whole, grouped (`(group, range)`): an object
    /// fetches a group's ranges together on its first read in one of them. A local file
    /// needs no such help. Groups over [`MAX_PREFETCH`] bytes are left out.
    pub fn prefetch(&self, ranges: Vec<(usize, std::ops::Range<u64>)>) {
        let Input::Object(_, p) = self else {
            return;
        };
        let mut size: HashMap<usize, u64> = HashMap::new();
        for (g, r) in &ranges {
            *size.entry(*g).or_default() += r.end.saturating_sub(r.start);
        }
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        p.planned = ranges
            .into_iter()
            .filter(|(g, r)| size[g] <= MAX_PREFETCH && r.start < r.end)
            .collect();
        p.fetched.clear();
        p.group = None;
    }

    /// The prefetched bytes from `start` to the end of the planned range holding it,
    /// fetching its group first if need be; `None` outside every planned range.
    fn prefetched(&self, start: u64) -> std::io::Result<Option<Bytes>> {
        let Input::Object(o, p) = self else {
            return Ok(None);
        };
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let Some((group, _)) = p.planned.iter().find(|(_, r)| r.contains(&start)).cloned() else {
            return Ok(None);
        };
        if p.group != Some(group) {
            p.fetched.clear();
            let ranges: Vec<std::ops::Range<u64>> = p
                .planned
                .iter()
                .filter(|(g, _)| *g == group)
                .map(|(_, r)| r.clone())
                .collect();
            let (s, key, url) = (o.store.clone(), o.key.clone(), o.url.clone());
            let starts: Vec<u64> = ranges.iter().map(|r| r.start).collect();
            let bytes = block(async move {
                s.get_ranges(&key, &ranges)
                    .await
                    .map_err(|e| error(&url, e))
            })?;
            p.fetched = starts.into_iter().zip(bytes).collect();
            p.group = Some(group);
        }
        Ok(p.fetched.iter().find_map(|(at, b)| {
            let end = at + b.len() as u64;
            (start >= *at && start < end).then(|| b.slice((start - at) as usize..))
        }))
    }

    pub fn len(&self) -> std::io::Result<u64> {
        match self {
            Input::Local(f) => Ok(f.metadata()?.len()),
            Input::Object(o, _) => Ok(o.len()),
        }
    }

    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Read for Input {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Input::Local(f) => f.read(out),
            Input::Object(o, _) => o.read(out),
        }
    }
}

impl Seek for Input {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match self {
            Input::Local(f) => f.seek(to),
            Input::Object(o, _) => o.seek(to),
        }
    }
}

impl parquet::file::reader::Length for Input {
    fn len(&self) -> u64 {
        Input::len(self).unwrap_or(0)
    }
}

impl parquet::file::reader::ChunkReader for Input {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(match self {
            Input::Local(f) => {
                let mut f = f.try_clone()?;
                f.seek(SeekFrom::Start(start))?;
                Box::new(std::io::BufReader::new(f))
            }
            Input::Object(o, _) => match self.prefetched(start)? {
                // A page header, then (by `get_bytes`) its data: from memory.
                Some(b) => {
                    let end = start + b.len() as u64;
                    Box::new(std::io::Cursor::new(b).chain(o.at(end)))
                }
                None => Box::new(o.at(start)),
            },
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Input::Local(f) => f.get_bytes(start, length),
            Input::Object(o, _) => {
                if let Some(b) = self.prefetched(start)?
                    && b.len() >= length
                {
                    return Ok(b.slice(..length));
                }
                let b = o.range(start, length as u64)?;
                if b.len() < length {
                    return Err(parquet::errors::ParquetError::EOF(format!(
                        "{}: wanted {length} bytes at {start}, the object has {}",
                        o.url, o.len
                    )));
                }
                Ok(b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_clean_key() {
        assert_eq!(
            parse("s3://data/flights/2013/").unwrap(),
            ("data".into(), "flights/2013".into())
        );
        assert_eq!(parse("s3://data").unwrap(), ("data".into(), String::new()));
        for bad in [
            "s3:///key",
            "s3://Data/x",
            "s3://b/a//c",
            "s3://b/a/../c",
            "s3://b/./c",
            "/local",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_inputs_read_and_seek_as_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut i = open(&p).unwrap();
        assert_eq!(i.len().unwrap(), 10);
        i.seek(SeekFrom::Start(4)).unwrap();
        let mut s = String::new();
        i.read_to_string(&mut s).unwrap();
        assert_eq!(s, "456789");
        use parquet::file::reader::ChunkReader;
        assert_eq!(&i.get_bytes(2, 3).unwrap()[..], b"234");
    }
}
