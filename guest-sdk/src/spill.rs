//! What a task's operators may hold, how output leaves the guest, and where state that
//! does not fit goes.
//!
//! - **Memory.** The SDK's allocator counts the bytes the guest holds; the host gives each
//!   task a budget at start (below its memory cap). Operators that keep state (hash
//!   tables, sort buffers, partition buffers) check [`over_budget`] per batch and emit or
//!   spill when it says so.
//! - **Output.** Rows leave through `task-host.emit` as they are ready, one Arrow IPC
//!   stream of at most [`MAX_CHUNK`] per call ([`emit_batch`] halves a batch that encodes
//!   larger).
//! - **Spill runs.** [`RunWriter`] appends postcard-encoded items to a host spill run in
//!   frames of about [`FRAME`] bytes; [`RunReader`] reads them back in order.

use crate::bindings::flint::job::task_host;
use crate::rows::ipc_bytes;
use crate::{Error, Result};
use arrow_array::RecordBatch;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::alloc::{GlobalAlloc, Layout, System};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Largest chunk or frame one host call carries (the host refuses more).
pub(crate) const MAX_CHUNK: usize = 16 << 20;
/// Bytes a spill frame collects before it goes to the host. A merge holds one frame per
/// run it reads, so this is small.
const FRAME: usize = 64 << 10;

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
struct Counting;

static USED: AtomicUsize = AtomicUsize::new(0);
static BUDGET: AtomicU64 = AtomicU64::new(u64::MAX);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is
// kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            USED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            USED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        USED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            USED.fetch_sub(layout.size(), Ordering::Relaxed);
            USED.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes the guest holds now.
pub(crate) fn used() -> u64 {
    USED.load(Ordering::Relaxed) as u64
}

/// The task's memory budget (unbounded outside a task).
pub(crate) fn budget() -> u64 {
    BUDGET.load(Ordering::Relaxed)
}

pub(crate) fn set_budget(bytes: u64) {
    BUDGET.store(bytes.max(1 << 20), Ordering::Relaxed);
}

/// Whether the guest holds more than its budget, or would after allocating `more`.
pub(crate) fn over_budget(more: u64) -> bool {
    used().saturating_add(more) > budget()
}

/// Hands one batch of output to the host (for reduce partition `partition` of a
/// shuffle, else 0), halved until each piece encodes within [`MAX_CHUNK`].
pub(crate) fn emit_batch(partition: u32, batch: &RecordBatch) -> Result<()> {
    let rows = batch.num_rows();
    if rows == 0 {
        return Ok(());
    }
    let ipc = ipc_bytes(batch)?;
    if ipc.len() > MAX_CHUNK {
        if rows == 1 {
            return Err(Error::msg(format!(
                "one row encodes to {} bytes, over the {MAX_CHUNK} bytes one output chunk may carry",
                ipc.len()
            )));
        }
        drop(ipc);
        let half = rows / 2;
        emit_batch(partition, &batch.slice(0, half))?;
        return emit_batch(partition, &batch.slice(half, rows - half));
    }
    emit_raw(partition, &ipc, rows as u64)
}

/// Frame `frame` of build side `build` of a broadcast hash join, or `None` past its last.
pub(crate) fn build_side_frame(build: u32, frame: u32) -> Result<Option<Vec<u8>>> {
    task_host::build_side_read(build, frame).map_err(Error::from_chain)
}

/// A chunk as it is: `ipc` already encoded (empty for a count).
pub(crate) fn emit_raw(partition: u32, ipc: &[u8], rows: u64) -> Result<()> {
    task_host::emit(partition, ipc, rows).map_err(Error::from_chain)
}

/// Writes items of `T` to a new spill run.
pub(crate) struct RunWriter<T> {
    id: u32,
    buf: Vec<u8>,
    _t: PhantomData<fn(T)>,
}

impl<T: Serialize> RunWriter<T> {
    pub fn new() -> Result<Self> {
        let id = task_host::spill_create().map_err(Error::from_chain)?;
        Ok(RunWriter {
            id,
            buf: Vec::with_capacity(FRAME + 1024),
            _t: PhantomData,
        })
    }

    pub fn push(&mut self, item: &T) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(item, buf)
            .map_err(|e| Error::from(e).context("encoding a spilled row"))?;
        if self.buf.len() >= FRAME {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            task_host::spill_append(self.id, &self.buf).map_err(Error::from_chain)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The run, to read back from its start.
    pub fn finish(mut self) -> Result<RunReader<T>> {
        self.flush()?;
        let id = self.id;
        self.id = u32::MAX; // the reader owns the run now
        Ok(RunReader {
            id,
            frame: Vec::new(),
            pos: 0,
            _t: PhantomData,
        })
    }
}

impl<T> Drop for RunWriter<T> {
    fn drop(&mut self) {
        if self.id != u32::MAX {
            task_host::spill_drop(self.id);
        }
    }
}

/// Reads a spill run back in the order it was written; drops it when done.
pub(crate) struct RunReader<T> {
    id: u32,
    frame: Vec<u8>,
    pos: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> RunReader<T> {
    pub fn next(&mut self) -> Result<Option<T>> {
        Ok(self.next_sized()?.map(|(item, _)| item))
    }

    /// The next item and the bytes it was encoded in.
    pub fn next_sized(&mut self) -> Result<Option<(T, usize)>> {
        if self.pos >= self.frame.len() {
            match task_host::spill_read(self.id).map_err(Error::from_chain)? {
                Some(f) => {
                    self.frame = f;
                    self.pos = 0;
                }
                None => {
                    self.frame = Vec::new();
                    self.pos = 0;
                    return Ok(None);
                }
            }
        }
        let (item, rest) = postcard::take_from_bytes::<T>(&self.frame[self.pos..])
            .map_err(|e| Error::from(e).context("decoding a spilled row"))?;
        let end = self.frame.len() - rest.len();
        let size = end - self.pos;
        self.pos = end;
        if end == self.frame.len() {
            // Let go of a read frame at once: a merge holds one item per run, and a
            // frame with a large item is as large as it.
            self.frame = Vec::new();
            self.pos = 0;
        }
        Ok(Some((item, size)))
    }
}

impl<T> Drop for RunReader<T> {
    fn drop(&mut self) {
        task_host::spill_drop(self.id);
    }
}
