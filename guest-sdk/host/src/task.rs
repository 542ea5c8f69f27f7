//! One task's guest instance: the host drives `task.start`, `push` per input batch,
//! `end-piece`, `finish` and `take-accumulators`; the guest hands its output to the
//! task's [`OutputSink`] through `task-host.emit` as it goes, and spills to the task's
//! [`SpillStore`] through `task-host.spill-*`.

use crate::bindings::FlintJob;
use crate::bindings::flint::job::task_host;
use crate::spill::{MAX_FRAME_BYTES, SpillConfig, SpillError, SpillStore};
use crate::{GuestState, LoadedJob, Sandbox, SandboxError, StoreLimits, convert, unwrap_call, wit};
use flint_protocol::ids::ModuleHash;
use flint_protocol::wire::{TaskDescriptor, TaskError, TaskErrorKind};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::Store;

/// Where a task's output chunks go as the guest emits them (the executor's shuffle
/// writer, part file, or result store). An error ends the task with it.
pub trait OutputSink: Send {
    fn accept(&mut self, chunk: Chunk) -> Result<(), TaskError>;
}

/// The frames (Arrow IPC streams) of a broadcast hash join's build side, as its map
/// tasks wrote them; shared by the tasks of an executor that read it.
pub type BuildSide = Arc<Vec<Vec<u8>>>;

/// A task's side of `task-host`, in its store.
pub(crate) struct TaskIo {
    sink: Box<dyn OutputSink>,
    spill: SpillStore,
    builds: Vec<BuildSide>,
    /// The first failure of a host call: it ends the task whatever the guest does with
    /// the error it was told.
    failure: Option<TaskError>,
}

impl TaskIo {
    fn fail(&mut self, e: TaskError) -> wit::ErrorChain {
        let chain = wit::ErrorChain {
            message: e.chain.first().cloned().unwrap_or_default(),
            causes: e.chain.iter().skip(1).cloned().collect(),
            kind: None,
        };
        self.failure.get_or_insert(e);
        chain
    }

    fn spill_failed(&mut self, e: SpillError) -> wit::ErrorChain {
        let kind = match e.limit() {
            Some(l) => TaskErrorKind::Limit(l),
            None => TaskErrorKind::Io,
        };
        self.fail(TaskError {
            kind,
            chain: vec![e.to_string()],
        })
    }
}

fn not_a_task() -> wit::ErrorChain {
    wit::ErrorChain {
        message: SpillError::NotATask.to_string(),
        causes: Vec::new(),
        kind: None,
    }
}

impl task_host::Host for GuestState {
    async fn emit(
        &mut self,
        partition: u32,
        ipc: Vec<u8>,
        rows: u64,
    ) -> Result<(), wit::ErrorChain> {
        let Some(io) = self.task.as_mut() else {
            return Err(not_a_task());
        };
        if io.failure.is_some() {
            return Err(io.fail(TaskError {
                kind: TaskErrorKind::Guest,
                chain: vec!["emit after the task's output failed".into()],
            }));
        }
        if ipc.len() > MAX_FRAME_BYTES {
            let n = ipc.len();
            return Err(io.fail(TaskError {
                kind: TaskErrorKind::Limit(flint_protocol::wire::Limit::Output),
                chain: vec![format!(
                    "the guest emitted a chunk of {n} bytes, over the {MAX_FRAME_BYTES} one call may carry"
                )],
            }));
        }
        match io.sink.accept(Chunk {
            partition,
            ipc,
            rows,
        }) {
            Ok(()) => Ok(()),
            Err(e) => Err(io.fail(e)),
        }
    }

    async fn spill_create(&mut self) -> Result<u32, wit::ErrorChain> {
        let Some(io) = self.task.as_mut() else {
            return Err(not_a_task());
        };
        io.spill.create().map_err(|e| io.spill_failed(e))
    }

    async fn spill_append(&mut self, run: u32, frame: Vec<u8>) -> Result<(), wit::ErrorChain> {
        let Some(io) = self.task.as_mut() else {
            return Err(not_a_task());
        };
        io.spill.append(run, &frame).map_err(|e| io.spill_failed(e))
    }

    async fn spill_read(&mut self, run: u32) -> Result<Option<Vec<u8>>, wit::ErrorChain> {
        let Some(io) = self.task.as_mut() else {
            return Err(not_a_task());
        };
        io.spill.read(run).map_err(|e| io.spill_failed(e))
    }

    async fn spill_drop(&mut self, run: u32) {
        if let Some(io) = self.task.as_mut() {
            io.spill.drop_run(run);
        }
    }

    async fn build_side_read(
        &mut self,
        build: u32,
        frame: u32,
    ) -> Result<Option<Vec<u8>>, wit::ErrorChain> {
        let Some(io) = self.task.as_mut() else {
            return Err(not_a_task());
        };
        match io.builds.get(build as usize) {
            Some(side) => Ok(side.get(frame as usize).cloned()),
            None => Err(wit::ErrorChain {
                message: format!(
                    "the task has {} build sides, not one numbered {build}",
                    io.builds.len()
                ),
                causes: Vec::new(),
                kind: None,
            }),
        }
    }
}

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
    /// Time to instantiate, in microseconds (0 for a warm instance).
    pub instantiate_us: u64,
    /// Whether it ran an earlier task of its application.
    pub warm: bool,
    /// What it may run next: its component and its application.
    key: (ModuleHash, u64),
    /// Fuel left when the task started (metered sandboxes).
    fuel_from: u64,
    /// Set once a call failed or was cut short: the instance's state is then unknown.
    spoiled: bool,
}

/// Linear memory up to which an instance is kept for the next task of its application.
/// Past it the memory goes back to the system with the instance.
pub const MAX_WARM_MEMORY: u64 = 64 << 20;

/// An instance whose task succeeded, kept for the next task of the same application and
/// component (Spark runs an application's tasks in the same executor JVMs): the next
/// task skips instantiation, and the pages its guest touches are already there. The
/// guest's own globals carry over, as an executor JVM's statics do; the SDK resets its
/// task state at `start`.
pub struct WarmInstance {
    store: Store<GuestState>,
    job: FlintJob,
    key: (ModuleHash, u64),
}

impl WarmInstance {
    /// The component it runs and the application it belongs to.
    pub fn key(&self) -> (ModuleHash, u64) {
        self.key
    }
}

impl Sandbox {
    /// Instantiates `loaded` for the task `desc` describes (on executor `executor`) and
    /// calls its `start`. Its output goes to `sink`, its spills under `spill`; the guest's
    /// operators may hold `memory_budget` bytes before they spill; its probe ops read
    /// `builds` (the task's build sides, in order).
    ///
    /// `warm`, an instance an earlier task of the same application and component left,
    /// runs the task if its memory fits `limits`; otherwise a fresh one does.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_task(
        self: &Arc<Self>,
        loaded: &LoadedJob,
        limits: &StoreLimits,
        broadcasts: Arc<dyn BroadcastSource>,
        desc: &TaskDescriptor,
        executor: u32,
        memory_budget: u64,
        sink: Box<dyn OutputSink>,
        spill: SpillConfig,
        builds: Vec<BuildSide>,
        warm: Option<WarmInstance>,
    ) -> Result<TaskInstance, SandboxError> {
        let key = (loaded.hash, desc.app);
        let io = TaskIo {
            sink,
            spill: SpillStore::new(spill),
            builds,
            failure: None,
        };
        let warm =
            warm.filter(|w| w.key == key && w.store.data().limiter.current <= limits.memory_bytes);
        let (store, job, instantiate_us, was_warm) = match warm {
            Some(WarmInstance { mut store, job, .. }) => {
                let from = store.data().output_len();
                let state = store.data_mut();
                state.limiter.cap = limits.memory_bytes;
                state.limiter.setting = limits.memory_setting;
                state.limiter.peak = state.limiter.current;
                state.deadline = limits
                    .deadline
                    .map(|b| (Instant::now() + b, b, limits.deadline_setting));
                state.broadcasts = Some(broadcasts);
                state.output_from = from;
                state.task = Some(io);
                (store, job, 0, true)
            }
            None => {
                let mut store = self.store(limits, None, Some(broadcasts));
                store.data_mut().task = Some(io);
                let t = Instant::now();
                let job = loaded.instantiate(&mut store).await?;
                (store, job, t.elapsed().as_micros() as u64, false)
            }
        };
        let fuel_from = store.get_fuel().unwrap_or(0);
        let mut task = TaskInstance {
            store,
            job,
            sandbox: self.clone(),
            instantiate_us,
            warm: was_warm,
            key,
            fuel_from,
            spoiled: true,
        };
        let spec = convert::task_spec(desc, executor, memory_budget);
        let r = task
            .job
            .flint_job_task()
            .call_start(&mut task.store, &spec)
            .await;
        task.checked(r)?;
        Ok(task)
    }
}

impl TaskInstance {
    /// A call's outcome: a host call's failure first (the guest cannot hide it by
    /// swallowing the error it was told), then the guest's own.
    fn checked<T>(
        &mut self,
        r: wasmtime::Result<Result<T, wit::ErrorChain>>,
    ) -> Result<T, SandboxError> {
        // Spoiled until the call is known to have succeeded: a call dropped halfway
        // (its task killed) leaves it so.
        self.spoiled = true;
        if let Some(e) = self
            .store
            .data_mut()
            .task
            .as_mut()
            .and_then(|t| t.failure.take())
        {
            return Err(SandboxError::Host(e));
        }
        let v = unwrap_call(r, &self.store)?;
        self.spoiled = false;
        Ok(v)
    }

    /// The instance, for the next task of its application, when its task succeeded and
    /// it holds little: its memory within [`MAX_WARM_MEMORY`] and its captured output
    /// within half of what its pipes take.
    pub fn recycle(mut self) -> Option<WarmInstance> {
        let state = self.store.data();
        let (out, err) = state.output_len();
        let room = state.output_cap / 2;
        if self.spoiled || state.limiter.current > MAX_WARM_MEMORY || out > room || err > room {
            return None;
        }
        let state = self.store.data_mut();
        // What the task had goes with it: its sink, spill runs, build sides, broadcasts.
        state.task = None;
        state.broadcasts = None;
        state.deadline = None;
        Some(WarmInstance {
            store: self.store,
            job: self.job,
            key: self.key,
        })
    }

    /// One Arrow IPC stream of piece `piece` (of shuffle side `side`); at most
    /// [`MAX_FRAME_BYTES`].
    pub async fn push(&mut self, piece: u32, side: u32, batch: &[u8]) -> Result<(), SandboxError> {
        let r = self
            .job
            .flint_job_task()
            .call_push(&mut self.store, piece, side, batch)
            .await;
        self.checked(r)
    }

    /// The end of piece `piece`: a shuffle piece emits its merged rows now.
    pub async fn end_piece(&mut self, piece: u32) -> Result<(), SandboxError> {
        let r = self
            .job
            .flint_job_task()
            .call_end_piece(&mut self.store, piece)
            .await;
        self.checked(r)
    }

    pub async fn finish(&mut self) -> Result<(), SandboxError> {
        let r = self.job.flint_job_task().call_finish(&mut self.store).await;
        self.checked(r)
    }

    /// Bytes the guest spilled and the runs it made.
    pub fn spilled(&self) -> (u64, u64) {
        self.store
            .data()
            .task
            .as_ref()
            .map_or((0, 0), |t| (t.spill.written, t.spill.count))
    }

    /// After `finish`: (accumulator id, merged partial value) of everything the task
    /// added.
    pub async fn take_accumulators(&mut self) -> Result<Vec<(u32, Vec<u8>)>, SandboxError> {
        let r = self
            .job
            .flint_job_task()
            .call_take_accumulators(&mut self.store)
            .await;
        let updates = self.checked(r.map(Ok))?;
        Ok(updates.into_iter().map(|u| (u.id, u.value)).collect())
    }

    /// Peak linear memory the guest reached.
    pub fn peak_memory(&self) -> u64 {
        self.store.data().peak_memory()
    }

    /// Fuel this task burnt, when the sandbox meters it.
    pub fn fuel_consumed(&self) -> Option<u64> {
        self.sandbox.meters().then(|| {
            self.fuel_from
                .saturating_sub(self.store.get_fuel().unwrap_or(0))
        })
    }

    /// What the guest printed (capped by the store's limits).
    pub fn stdout(&self) -> String {
        self.store.data().stdout()
    }

    pub fn stderr(&self) -> String {
        self.store.data().stderr()
    }
}
