//! Shuffle: map outputs on local disk, the segment server, and the fetcher.
//!
//! A map task writes one data file (its reduce partitions' Arrow IPC segments back to
//! back) and one index file (`partitions + 1` little-endian `u64` offsets) under
//! `WORK/shuffle/<job>/<shuffle>/`, index last, both by rename, so a reader sees a whole
//! output or none.

use crate::memory::{Grant, MemoryPool};
use flint_protocol::ids::{ExecutorId, JobId, ShuffleId};
use flint_protocol::plan::StorageLevel;
use flint_protocol::wire::{FetchSegments, MAX_FETCH_MAPS, SegmentSource};
use flint_sandbox::spill::MAX_FRAME_BYTES;
use flint_transport::net::{self, NetError};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ShuffleError {
    #[error("shuffle file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shuffle index {path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("reduce partition {reduce} out of range: the map output has {partitions}")]
    OutOfRange { reduce: u32, partitions: u32 },
    #[error("refused: the request does not hold the capability of {0}'s shuffle data")]
    Forbidden(JobId),
}

/// A job's shuffle capability: random, known to the driver and to the job's tasks only.
pub type ShuffleSecret = [u8; 16];

pub struct ShuffleStore {
    root: PathBuf,
    /// Per job with outputs here, the capability a fetch must present.
    secrets: Mutex<HashMap<JobId, ShuffleSecret>>,
    /// Cached partitions kept in memory (the block store's memory tier).
    cached: Mutex<MemoryTier>,
    /// The executor's memory, shared with its tasks: the tier's budget is what they do
    /// not hold (and at least `executor.cache_memory`).
    memory: Arc<MemoryPool>,
}

type BlockKey = (JobId, ShuffleId, u32);

/// Cached partitions in memory under a byte budget, least recently used first out.
#[derive(Default)]
struct MemoryTier {
    blocks: HashMap<BlockKey, Block>,
    used: u64,
    clock: u64,
    /// Evicted memory-only partitions: no longer cached (the driver is told).
    dropped: Vec<BlockKey>,
}

struct Block {
    segments: Vec<Vec<u8>>,
    level: StorageLevel,
    bytes: u64,
    used_at: u64,
}

impl ShuffleStore {
    pub fn new(work_dir: &Path) -> ShuffleStore {
        Self::with_cache_memory(work_dir, 512 << 20)
    }

    /// A store keeping up to `budget` bytes of cached partitions in memory.
    pub fn with_cache_memory(work_dir: &Path, budget: u64) -> ShuffleStore {
        Self::with_memory(work_dir, MemoryPool::new(budget, budget, 1))
    }

    /// A store whose cache tier shares `memory` with the executor's tasks.
    pub fn with_memory(work_dir: &Path, memory: Arc<MemoryPool>) -> ShuffleStore {
        ShuffleStore {
            root: work_dir.join("shuffle"),
            secrets: Mutex::new(HashMap::new()),
            cached: Mutex::new(MemoryTier::default()),
            memory,
        }
    }

    /// A task's memory from the executor's pool (see [`MemoryPool::grant`]); cached
    /// partitions beyond what is left for storage are evicted first.
    pub fn grant_task(&self, want: u64) -> Result<Grant, ShuffleError> {
        let grant = self.memory.grant(want);
        self.evict(None)?;
        Ok(grant)
    }

    /// [`grant_task`](Self::grant_task) when the grant leaves the cache tier within its
    /// budget (nothing to write to disk): no blocking, so no thread to hand it to.
    pub fn grant_task_now(&self, want: u64) -> Option<Grant> {
        let grant = self.memory.grant(want);
        (self.tier().used <= self.memory.storage_budget()).then_some(grant)
    }

    fn tier(&self) -> std::sync::MutexGuard<'_, MemoryTier> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a cached dataset's partition at `level`. In memory, older partitions are
    /// evicted past the budget: to disk for memory-and-disk; for memory-only they are
    /// written to disk too, so the job that needs them now still finds them, but they
    /// are no longer cached ([`take_dropped`](Self::take_dropped) says which).
    pub fn put_cached(
        &self,
        key: BlockKey,
        segments: Vec<Vec<u8>>,
        level: StorageLevel,
    ) -> Result<Vec<u64>, ShuffleError> {
        let sizes: Vec<u64> = segments.iter().map(|s| s.len() as u64).collect();
        if level == StorageLevel::DiskOnly {
            return self.write(key.0, key.1, key.2, &segments);
        }
        let bytes = sizes.iter().sum::<u64>();
        {
            let mut t = self.tier();
            t.clock += 1;
            let used_at = t.clock;
            if let Some(old) = t.blocks.insert(
                key,
                Block {
                    segments,
                    level,
                    bytes,
                    used_at,
                },
            ) {
                t.used -= old.bytes;
            }
            t.used += bytes;
        }
        self.evict(Some(key))?;
        Ok(sizes)
    }

    /// Evicts the least recently used partitions (never `keep`, the one just put) until
    /// the tier is within its budget, writing them to disk.
    fn evict(&self, keep: Option<BlockKey>) -> Result<(), ShuffleError> {
        let budget = self.memory.storage_budget();
        let mut evicted = Vec::new();
        {
            let mut t = self.tier();
            while t.used > budget {
                let victim = t
                    .blocks
                    .iter()
                    .filter(|(k, _)| Some(**k) != keep)
                    .min_by_key(|(_, b)| b.used_at)
                    .map(|(k, _)| *k);
                let Some(victim) = victim else { break };
                let b = t.blocks.remove(&victim).expect("chosen from the map");
                t.used -= b.bytes;
                if b.level == StorageLevel::MemoryOnly {
                    t.dropped.push(victim);
                }
                evicted.push((victim, b));
            }
        }
        for ((job, shuffle, map), b) in evicted {
            self.write(job, shuffle, map, &b.segments)?;
        }
        Ok(())
    }

    /// Memory-only partitions evicted since the last call.
    pub fn take_dropped(&self) -> Vec<BlockKey> {
        std::mem::take(&mut self.tier().dropped)
    }

    /// Forgets the in-memory cached partitions whose key `gone` picks.
    fn forget_blocks(&self, gone: impl Fn(&BlockKey) -> bool) {
        let mut t = self.tier();
        let mut freed = 0;
        t.blocks.retain(|k, b| {
            let keep = !gone(k);
            if !keep {
                freed += b.bytes;
            }
            keep
        });
        t.used -= freed;
    }

    /// Drops a cached dataset's partitions, in memory and on disk.
    pub fn drop_cached(&self, job: JobId, shuffle: ShuffleId) {
        self.forget_blocks(|k| k.0 == job && k.1 == shuffle);
        let _ = std::fs::remove_dir_all(
            self.root
                .join(job.0.to_string())
                .join(shuffle.0.to_string()),
        );
    }

    fn secrets(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, ShuffleSecret>> {
        self.secrets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `job`'s capability when its first map output lands here; a task of the same
    /// job id with another capability is refused.
    pub fn grant(&self, job: JobId, secret: ShuffleSecret) -> Result<(), ShuffleError> {
        let mut s = self.secrets();
        let held = s.entry(job).or_insert(secret);
        if flint_protocol::constant_time_eq(held, &secret) {
            Ok(())
        } else {
            Err(ShuffleError::Forbidden(job))
        }
    }

    /// Whether `secret` is `job`'s capability (compared in constant time).
    pub fn check(&self, job: JobId, secret: &ShuffleSecret) -> Result<(), ShuffleError> {
        match self.secrets().get(&job) {
            Some(held) if flint_protocol::constant_time_eq(held, secret) => Ok(()),
            _ => Err(ShuffleError::Forbidden(job)),
        }
    }

    /// The segments of `reduce` in the map outputs `maps` (from `offset`, at most `len`
    /// bytes of each), read one after another on the calling thread: a blocking read of
    /// many small segments in one hand-off instead of one each. Stops after the segment
    /// that brings the bytes read to `max_bytes` (so a caller holds no more than that and
    /// one segment): the results are for the first maps, in order. Every map's is an
    /// error when `secret` is not the job's.
    #[allow(clippy::too_many_arguments)]
    pub fn read_segments(
        &self,
        job: JobId,
        secret: &ShuffleSecret,
        shuffle: ShuffleId,
        maps: &[u32],
        reduce: u32,
        (offset, len): (u64, u64),
        max_bytes: u64,
    ) -> Vec<Result<Vec<u8>, String>> {
        if let Err(e) = self.check(job, secret) {
            return maps.iter().map(|_| Err(e.to_string())).collect();
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for &map in maps {
            let r = self.read_range(job, shuffle, map, reduce, offset, len);
            bytes += r.as_ref().map_or(0, |d| d.len() as u64);
            out.push(r.map_err(|e| e.to_string()));
            if bytes >= max_bytes {
                break;
            }
        }
        out
    }

    fn paths(&self, job: JobId, shuffle: ShuffleId, map: u32) -> (PathBuf, PathBuf) {
        let dir = self
            .root
            .join(job.0.to_string())
            .join(shuffle.0.to_string());
        (
            dir.join(format!("map-{map}.data")),
            dir.join(format!("map-{map}.index")),
        )
    }

    /// Writes a map output; `segments[p]` is reduce partition `p`'s bytes. Returns sizes.
    pub fn write(
        &self,
        job: JobId,
        shuffle: ShuffleId,
        map: u32,
        segments: &[Vec<u8>],
    ) -> Result<Vec<u64>, ShuffleError> {
        self.write_with(job, shuffle, map, segments.len(), |p, f| {
            f.write_all(&segments[p])?;
            Ok(segments[p].len() as u64)
        })
    }

    /// Writes a map output of `partitions` segments, `segment(p, file)` writing reduce
    /// partition `p`'s bytes and returning how many. Data file first, index last, each by
    /// rename.
    pub fn write_with(
        &self,
        job: JobId,
        shuffle: ShuffleId,
        map: u32,
        partitions: usize,
        mut segment: impl FnMut(usize, &mut dyn Write) -> std::io::Result<u64>,
    ) -> Result<Vec<u64>, ShuffleError> {
        let (data, index) = self.paths(job, shuffle, map);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ShuffleError::Io { path, source }
        };
        let dir = data.parent().expect("shuffle paths have a parent");
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tmp_data = data.with_extension(format!("data.tmp{}", std::process::id()));
        let mut f = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&tmp_data).map_err(io(&tmp_data))?,
        );
        let mut offsets = Vec::with_capacity(partitions + 1);
        let mut sizes = Vec::with_capacity(partitions);
        let mut off = 0u64;
        offsets.push(0u64);
        for p in 0..partitions {
            let n = segment(p, &mut f).map_err(io(&tmp_data))?;
            off += n;
            offsets.push(off);
            sizes.push(n);
        }
        f.flush().map_err(io(&tmp_data))?;
        drop(f);
        std::fs::rename(&tmp_data, &data).map_err(io(&data))?;
        let tmp_index = index.with_extension(format!("index.tmp{}", std::process::id()));
        let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        std::fs::write(&tmp_index, bytes).map_err(io(&tmp_index))?;
        std::fs::rename(&tmp_index, &index).map_err(io(&index))?;
        Ok(sizes)
    }

    /// Reads reduce partition `reduce`'s segment of one map output (from memory for a
    /// cached partition held there).
    /// A whole segment.
    pub fn read(
        &self,
        job: JobId,
        shuffle: ShuffleId,
        map: u32,
        reduce: u32,
    ) -> Result<Vec<u8>, ShuffleError> {
        self.read_range(job, shuffle, map, reduce, 0, u64::MAX)
    }

    /// At most `len` bytes of a segment from `offset` (fewer at its end, none past it).
    pub fn read_range(
        &self,
        job: JobId,
        shuffle: ShuffleId,
        map: u32,
        reduce: u32,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ShuffleError> {
        let range = |size: u64| {
            let start = offset.min(size);
            (start, start.saturating_add(len).min(size))
        };
        {
            let mut t = self.tier();
            t.clock += 1;
            let now = t.clock;
            if let Some(b) = t.blocks.get_mut(&(job, shuffle, map)) {
                b.used_at = now;
                let partitions = b.segments.len() as u32;
                let seg = b
                    .segments
                    .get(reduce as usize)
                    .ok_or(ShuffleError::OutOfRange { reduce, partitions })?;
                let (from, to) = range(seg.len() as u64);
                return Ok(seg[from as usize..to as usize].to_vec());
            }
        }
        // Only the two offsets this segment needs are read from the index, as Spark's
        // index resolver does: a reduce task of R partitions reading M map outputs must
        // not read M x R offsets per segment.
        let (data, index) = self.paths(job, shuffle, map);
        let io_index = |source| ShuffleError::Io {
            path: index.clone(),
            source,
        };
        let idx = std::fs::File::open(&index).map_err(io_index)?;
        let idx_len = idx.metadata().map_err(io_index)?.len();
        let corrupt = |what: &str| ShuffleError::Corrupt {
            path: index.clone(),
            what: what.to_string(),
        };
        if idx_len < 16 || idx_len % 8 != 0 {
            return Err(corrupt("length is not a whole number of offsets"));
        }
        let partitions = u32::try_from(idx_len / 8 - 1).unwrap_or(u32::MAX);
        if reduce >= partitions {
            return Err(ShuffleError::OutOfRange { reduce, partitions });
        }
        let mut pair = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(&idx, &mut pair, u64::from(reduce) * 8)
            .map_err(io_index)?;
        let [start, end] =
            [&pair[..8], &pair[8..]].map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        if end < start {
            return Err(corrupt("offsets go backwards"));
        }
        let io = |source| ShuffleError::Io {
            path: data.clone(),
            source,
        };
        let f = std::fs::File::open(&data).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if end > len {
            return Err(corrupt("offset past the end of the data file"));
        }
        let (from, to) = range(end - start);
        let mut buf = vec![0u8; (to - from) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, start + from).map_err(io)?;
        Ok(buf)
    }

    pub fn remove_job(&self, job: JobId) {
        self.secrets().remove(&job);
        self.forget_blocks(|k| k.0 == job);
        let _ = std::fs::remove_dir_all(self.root.join(job.0.to_string()));
        // Spill runs go with their task; what a task left if it was cut off goes here.
        if let Some(work) = self.root.parent() {
            let _ = std::fs::remove_dir_all(work.join("spill").join(job.0.to_string()));
        }
    }
}

/// A map task's output as its guest emits it: framed chunks per reduce partition
/// (`u32` length, then one Arrow IPC stream), held in memory up to a budget and appended
/// to one spill run past it, then written as the map output's one data file and index in
/// partition order (Spark's sort shuffle, with the guest's chunks as records).
pub struct MapOutputWriter {
    parts: Vec<Vec<u8>>,
    held: u64,
    budget: u64,
    run_path: PathBuf,
    run: Option<std::io::BufWriter<std::fs::File>>,
    run_len: u64,
    /// Per partition, its (offset, length) ranges in the run, in order.
    spilled: Vec<Vec<(u64, u64)>>,
    /// Bytes appended to the run, and how many times the buffers went there.
    pub spill_bytes: u64,
    pub spill_count: u64,
}

impl MapOutputWriter {
    /// A writer for `partitions` reduce partitions holding up to `budget` bytes; its run
    /// (if it needs one) is `run_path`.
    pub fn new(partitions: u32, budget: u64, run_path: PathBuf) -> MapOutputWriter {
        MapOutputWriter {
            parts: vec![Vec::new(); partitions as usize],
            held: 0,
            budget,
            run_path,
            run: None,
            run_len: 0,
            spilled: vec![Vec::new(); partitions as usize],
            spill_bytes: 0,
            spill_count: 0,
        }
    }

    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// Appends one chunk of reduce partition `p` (in range: the caller checked).
    pub fn append(&mut self, p: usize, ipc: &[u8]) -> std::io::Result<()> {
        let part = &mut self.parts[p];
        part.extend_from_slice(&(ipc.len() as u32).to_le_bytes());
        part.extend_from_slice(ipc);
        self.held += ipc.len() as u64 + 4;
        if self.held > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        if self.run.is_none() {
            if let Some(dir) = self.run_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            self.run = Some(std::io::BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&self.run_path)?,
            ));
        }
        let run = self.run.as_mut().expect("opened above");
        for (p, part) in self.parts.iter_mut().enumerate() {
            if part.is_empty() {
                continue;
            }
            run.write_all(part)?;
            self.spilled[p].push((self.run_len, part.len() as u64));
            self.run_len += part.len() as u64;
            self.spill_bytes += part.len() as u64;
            *part = Vec::new();
        }
        self.held = 0;
        self.spill_count += 1;
        Ok(())
    }

    /// The segments whole, in memory, when nothing was spilled (for the cache's memory
    /// tier); otherwise the writer back.
    pub fn into_segments(mut self) -> Result<Vec<Vec<u8>>, Box<MapOutputWriter>> {
        if self.run.is_none() {
            Ok(std::mem::take(&mut self.parts))
        } else {
            Err(Box::new(self))
        }
    }

    /// Writes the map output into `store` and removes the run; the segments' sizes.
    pub fn commit(
        mut self,
        store: &ShuffleStore,
        job: JobId,
        shuffle: ShuffleId,
        map: u32,
    ) -> Result<Vec<u64>, ShuffleError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ShuffleError::Io { path, source }
        };
        let mut run = match self.run.take() {
            None => return store.write(job, shuffle, map, &self.parts),
            Some(w) => {
                let f = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .map_err(io(&self.run_path))?;
                drop(f);
                std::fs::File::open(&self.run_path).map_err(io(&self.run_path))?
            }
        };
        let (parts, spilled) = (&self.parts, &self.spilled);
        let r = store.write_with(job, shuffle, map, parts.len(), |p, out| {
            let mut n = 0;
            for &(off, len) in &spilled[p] {
                run.seek(SeekFrom::Start(off))?;
                n += std::io::copy(&mut (&mut run).take(len), out)?;
            }
            out.write_all(&parts[p])?;
            Ok(n + parts[p].len() as u64)
        });
        drop(run);
        let _ = std::fs::remove_file(&self.run_path);
        r
    }
}

impl Drop for MapOutputWriter {
    fn drop(&mut self) {
        if self.run.take().is_some() || self.run_len > 0 {
            let _ = std::fs::remove_file(&self.run_path);
        }
    }
}

/// Bytes of a segment one fetch asks for: a reduce task holds a chunk per segment in
/// flight, not the segment.
pub const SEGMENT_CHUNK: u64 = 8 << 20;

/// The whole frames at the start of `buf` (part of a segment, from a frame's start), and
/// where the first frame not yet whole begins.
pub fn whole_frames(buf: &[u8]) -> Result<(Vec<&[u8]>, usize), String> {
    let (mut out, mut at) = (Vec::new(), 0);
    while buf.len() - at >= 4 {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(format!(
                "a shuffle segment's frame of {len} bytes, over the {MAX_FRAME_BYTES} one may hold"
            ));
        }
        if buf.len() - at - 4 < len {
            break;
        }
        out.push(&buf[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    Ok((out, at))
}

/// The frames of a segment written by [`MapOutputWriter`]: each one Arrow IPC stream.
pub fn frames(segment: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    let mut rest = segment;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < 4 {
            rest = &[];
            return Some(Err("a shuffle segment ends inside a frame header".into()));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() - 4 < len {
            rest = &[];
            return Some(Err(format!(
                "a shuffle segment's frame of {len} bytes runs past its end"
            )));
        }
        let (frame, tail) = rest[4..].split_at(len);
        rest = tail;
        Some(Ok(frame))
    })
}

/// Serves segment fetches on one peer connection until it closes. The peer is an
/// executor of this cluster (the handshake required its certificate); its connection
/// opens with the preamble, then every fetch is a stream of its own.
pub async fn serve_connection(
    conn: quinn::Connection,
    store: std::sync::Arc<ShuffleStore>,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    match net::accept(&conn).await {
        Ok((mut send, _)) => {
            let _ = send.finish();
        }
        Err(e) => {
            tracing::debug!("refused a peer connection: {e}");
            conn.close(1u32.into(), e.to_string().as_bytes());
            return;
        }
    }
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let store = store.clone();
        let served = served.clone();
        tokio::spawn(async move {
            let req: FetchSegments = match net::expect_frame(&mut recv, 1 << 10).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("bad fetch request: {e}");
                    return;
                }
            };
            if req.maps.is_empty() || req.maps.len() > MAX_FETCH_MAPS {
                let e = format!(
                    "a fetch of {} map outputs' segments (one request names 1 to {MAX_FETCH_MAPS})",
                    req.maps.len()
                );
                let _ = net::send_blob(&mut send, Err(e)).await;
                return;
            }
            // A peer asks for a chunk of each segment; it gets no more than a few at once.
            let range = (req.offset, req.len.min(4 * SEGMENT_CHUNK));
            let maps = std::sync::Arc::new(req.maps);
            let mut next = 0;
            while next < maps.len() {
                // Read a group of segments in one blocking call, send them, read the next:
                // what this holds at once stays near SEGMENT_CHUNK.
                let (store, m) = (store.clone(), maps.clone());
                let (job, secret, shuffle, reduce) =
                    (req.job, req.secret, req.shuffle, req.reduce_partition);
                let group = tokio::task::spawn_blocking(move || {
                    store.read_segments(
                        job,
                        &secret,
                        shuffle,
                        &m[next..],
                        reduce,
                        range,
                        SEGMENT_CHUNK,
                    )
                })
                .await
                .unwrap_or_else(|e| vec![Err(e.to_string())]);
                for r in &group {
                    if let Ok(d) = r {
                        served.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    let reply = r.as_deref().map_err(|e| e.clone());
                    if net::write_blob(&mut send, reply).await.is_err() {
                        return;
                    }
                }
                next += group.len().max(1);
            }
            let _ = send.finish();
        });
    }
}

#[derive(Debug, Error)]
#[error("fetching map output {map_partition} from {executor} at {addr}: {source}")]
pub struct FetchError {
    pub executor: ExecutorId,
    pub addr: String,
    pub map_partition: u32,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Fetches segments: local reads for this executor's own outputs, QUIC for peers'.
pub struct Fetcher {
    endpoint: quinn::Endpoint,
    me: ExecutorId,
    store: std::sync::Arc<ShuffleStore>,
    conns: Mutex<HashMap<String, quinn::Connection>>,
}

impl Fetcher {
    pub fn new(
        endpoint: quinn::Endpoint,
        me: ExecutorId,
        store: std::sync::Arc<ShuffleStore>,
    ) -> Fetcher {
        Fetcher {
            endpoint,
            me,
            store,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// The executor this fetcher works for.
    pub fn me(&self) -> ExecutorId {
        self.me
    }

    /// Up to [`SEGMENT_CHUNK`] bytes from `offset` of each segment of `reduce` in `srcs`
    /// (fewer: its end), all held by one executor and at most [`MAX_FETCH_MAPS`]: one
    /// blocking read of them here, or one request to their executor. One result per
    /// source, in order; the flag says whether the bytes crossed the network.
    pub async fn fetch(
        &self,
        job: JobId,
        shuffle: ShuffleId,
        reduce: u32,
        srcs: &[SegmentSource],
        secret: ShuffleSecret,
        offset: u64,
    ) -> Vec<Result<(Vec<u8>, bool), FetchError>> {
        let fail =
            |src: &SegmentSource, source: Box<dyn std::error::Error + Send + Sync>| FetchError {
                executor: src.executor,
                addr: src.addr.clone(),
                map_partition: src.map_partition,
                source,
            };
        let all_fail = |e: &dyn std::fmt::Display| {
            srcs.iter()
                .map(|s| Err(fail(s, e.to_string().into())))
                .collect::<Vec<_>>()
        };
        let Some(first) = srcs.first() else {
            return Vec::new();
        };
        let maps: Vec<u32> = srcs.iter().map(|s| s.map_partition).collect();
        if first.executor == self.me {
            let store = self.store.clone();
            let read = tokio::task::spawn_blocking(move || {
                store.read_segments(
                    job,
                    &secret,
                    shuffle,
                    &maps,
                    reduce,
                    (offset, SEGMENT_CHUNK),
                    u64::MAX,
                )
            })
            .await;
            return match read {
                Ok(results) => srcs
                    .iter()
                    .zip(results)
                    .map(|(s, r)| r.map(|d| (d, false)).map_err(|e| fail(s, e.into())))
                    .collect(),
                Err(e) => all_fail(&e),
            };
        }
        let conn = match self.connection(&first.addr).await {
            Ok(c) => c,
            Err(e) => return all_fail(&e),
        };
        let req = FetchSegments {
            job,
            secret,
            shuffle,
            maps,
            reduce_partition: reduce,
            offset,
            len: SEGMENT_CHUNK,
        };
        let mut out = Vec::with_capacity(srcs.len());
        let stream = async {
            let (mut send, recv) = conn.open_bi().await?;
            net::write_frame(&mut send, &req).await?;
            let _ = send.finish();
            Ok::<_, NetError>(recv)
        }
        .await;
        let mut recv = match stream {
            Ok(r) => r,
            Err(e) => {
                self.forget(&first.addr);
                return all_fail(&e);
            }
        };
        for (i, src) in srcs.iter().enumerate() {
            match net::recv_blob(&mut recv, SEGMENT_CHUNK).await {
                Ok(data) => out.push(Ok((data, true))),
                // The serving executor's answer for this segment (the rest still come).
                Err(NetError::Refused(e)) => out.push(Err(fail(src, e.into()))),
                Err(e) => {
                    self.forget(&first.addr);
                    out.extend(srcs[i..].iter().map(|s| Err(fail(s, e.to_string().into()))));
                    break;
                }
            }
        }
        out
    }

    /// Drops the cached connection to `addr` (it stopped answering).
    pub fn forget(&self, addr: &str) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
    }

    async fn connection(&self, addr: &str) -> Result<quinn::Connection, NetError> {
        let cached = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr)
            .cloned();
        if let Some(c) = cached.filter(|c| c.close_reason().is_none()) {
            return Ok(c);
        }
        let c = net::connect(&self.endpoint, addr, flint_transport::tls::EXECUTOR_NAME).await?;
        net::open(&c).await?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_frames_stop_at_a_partial_frame_and_refuse_an_oversized_one() {
        let mut buf = Vec::new();
        for f in [&b"ab"[..], b"cde"] {
            buf.extend_from_slice(&(f.len() as u32).to_le_bytes());
            buf.extend_from_slice(f);
        }
        let whole = buf.len();
        buf.extend_from_slice(&9u32.to_le_bytes());
        buf.extend_from_slice(b"fg");
        let (frames, rest) = whole_frames(&buf).unwrap();
        assert_eq!(frames, vec![&b"ab"[..], b"cde"]);
        assert_eq!(rest, whole);
        // Only a header's first bytes: not yet whole either.
        assert_eq!(whole_frames(&buf[..whole + 2]).unwrap().1, whole);
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_le_bytes();
        assert!(whole_frames(&huge).unwrap_err().contains("over the"));
    }

    #[test]
    fn segments_roundtrip_and_bad_requests_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShuffleStore::new(dir.path());
        let segs = vec![b"abc".to_vec(), Vec::new(), b"defgh".to_vec()];
        let sizes = store.write(JobId(1), ShuffleId(0), 4, &segs).unwrap();
        assert_eq!(sizes, vec![3, 0, 5]);
        assert_eq!(store.read(JobId(1), ShuffleId(0), 4, 2).unwrap(), b"defgh");
        assert!(store.read(JobId(1), ShuffleId(0), 4, 1).unwrap().is_empty());
        // Ranges: within the segment, cut at its end, empty past it.
        let range = |o, l| {
            store
                .read_range(JobId(1), ShuffleId(0), 4, 2, o, l)
                .unwrap()
        };
        assert_eq!(range(1, 3), b"efg");
        assert_eq!(range(3, 10), b"gh");
        assert!(range(9, 10).is_empty());
        assert!(matches!(
            store.read(JobId(1), ShuffleId(0), 4, 3),
            Err(ShuffleError::OutOfRange { .. })
        ));
        assert!(matches!(
            store.read(JobId(1), ShuffleId(0), 5, 0),
            Err(ShuffleError::Io { .. })
        ));
        let (_, index) = store.paths(JobId(1), ShuffleId(0), 4);
        std::fs::write(&index, [0xff; 24]).unwrap();
        assert!(matches!(
            store.read(JobId(1), ShuffleId(0), 4, 0),
            Err(ShuffleError::Corrupt { .. })
        ));
    }
}
