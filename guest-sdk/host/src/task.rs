//! One task's guest instance: the host drives `task.start`, `push` per input batch,
//! `end-piece`, `finish` and `take-accumulators`, and takes the chunks it emits.

use crate::bindings::FlintJob;
use crate::{GuestState, LoadedJob, Sandbox, SandboxError, StoreLimits, convert, unwrap_call};
use flint_protocol::wire::TaskDescriptor;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::Store;

/// A broadcast value on its way.
pub type BroadcastFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<Vec<u8>>, String>> + Send + 'a>>;

/// Where a task gets broadcast values.
pub trait BroadcastSource: Send + Sync {
    fn get(&self, id: u32) -> BroadcastFuture<'_>;
}

/// Output of the guest: for a shuffle write, the segment of reduce partition
/// `partition`; otherwise `partition` is 0. `ipc` is an Arrow IPC stream, empty for
/// `count`.
#[derive(Debug)]
pub struct Chunk {
    pub partition: u32,
    pub ipc: Vec<u8>,
    pub rows: u64,
}

/// A live guest instance running one task attempt.
pub struct TaskInstance {
    store: Store<GuestState>,
    job: FlintJob,
    sandbox: Arc<Sandbox>,
    /// Time to instantiate, in microseconds.
    pub instantiate_us: u64,
}

impl Sandbox {
    /// Instantiates `loaded` for the task `desc` describes (on executor `executor`) and
    /// calls its `start`.
    pub async fn start_task(
        self: &Arc<Self>,
        loaded: &LoadedJob,
        limits: &StoreLimits,
        broadcasts: Arc<dyn BroadcastSource>,
        desc: &TaskDescriptor,
        executor: u32,
    ) -> Result<TaskInstance, SandboxError> {
        let mut store = self.store(limits, None, Some(broadcasts));
        let t = Instant::now();
        let job = loaded.instantiate(&mut store).await?;
        let instantiate_us = t.elapsed().as_micros() as u64;
        let spec = convert::task_spec(desc, executor);
        let r = job.flint_job_task().call_start(&mut store, &spec).await;
        unwrap_call(r, &store)?;
        Ok(TaskInstance {
            store,
            job,
            sandbox: self.clone(),
            instantiate_us,
        })
    }
}

impl TaskInstance {
    /// One batch of piece `piece` (of shuffle side `side`).
    pub async fn push(
        &mut self,
        piece: u32,
        side: u32,
        batch: &[u8],
    ) -> Result<Vec<Chunk>, SandboxError> {
        let r = self
            .job
            .flint_job_task()
            .call_push(&mut self.store, piece, side, batch)
            .await;
        Ok(chunks(unwrap_call(r, &self.store)?))
    }

    /// The end of piece `piece`: a shuffle piece emits its merged rows now.
    pub async fn end_piece(&mut self, piece: u32) -> Result<Vec<Chunk>, SandboxError> {
        let r = self
            .job
            .flint_job_task()
            .call_end_piece(&mut self.store, piece)
            .await;
        Ok(chunks(unwrap_call(r, &self.store)?))
    }

    pub async fn finish(&mut self) -> Result<Vec<Chunk>, SandboxError> {
        let r = self.job.flint_job_task().call_finish(&mut self.store).await;
        Ok(chunks(unwrap_call(r, &self.store)?))
    }

    /// After `finish`: (accumulator id, merged partial value) of everything the task
    /// added.
    pub async fn take_accumulators(&mut self) -> Result<Vec<(u32, Vec<u8>)>, SandboxError> {
        let r = self
            .job
            .flint_job_task()
            .call_take_accumulators(&mut self.store)
            .await;
        let updates = unwrap_call(r.map(Ok), &self.store)?;
        Ok(updates.into_iter().map(|u| (u.id, u.value)).collect())
    }

    /// Peak linear memory the guest reached.
    pub fn peak_memory(&self) -> u64 {
        self.store.data().peak_memory()
    }

    /// Fuel burnt, when the sandbox meters it.
    pub fn fuel_consumed(&self) -> Option<u64> {
        self.sandbox.fuel_consumed(&self.store)
    }

    /// What the guest printed (capped by the store's limits).
    pub fn stdout(&self) -> String {
        self.store.data().stdout()
    }

    pub fn stderr(&self) -> String {
        self.store.data().stderr()
    }
}

fn chunks(v: Vec<crate::bindings::exports::flint::job::task::Chunk>) -> Vec<Chunk> {
    v.into_iter()
        .map(|c| Chunk {
            partition: c.partition,
            ipc: c.ipc,
            rows: c.rows,
        })
        .collect()
}
