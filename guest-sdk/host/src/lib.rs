//! The host side of the WIT world between Flint and a job component: one [`Sandbox`]
//! (engine, linker, compiled-component cache) per process, one store per task or
//! driver program, with a memory cap and an epoch deadline.
//!
//! Neighbours: both roles use it. The driver runs a job's `main` with
//! [`Sandbox::run_program`], answering its actions through an [`ActionRunner`]; an
//! executor runs tasks with [`Sandbox::start_task`] and drives the [`TaskInstance`].
//! The world itself is `guest-sdk/wit/flint.wit` (crate `flint-wit`), which the guest SDK
//! compiles from too; the interface version comes from there.
//!
//! The one decision to know: everything of wasmtime and of the WIT types stays in this
//! crate. Callers speak `flint-protocol` ([`LogicalPlan`], [`TaskDescriptor`],
//! [`TaskError`](flint_protocol::wire::TaskError)); [`convert`] is where the two meet.
//! Guests get no preopened directories, no sockets and no inherited stdio: their stdout
//! and stderr are captured, size-capped, and their only door out is the `flint:job/host`
//! import.
//!
//! [`LogicalPlan`]: flint_protocol::plan::LogicalPlan
//! [`TaskDescriptor`]: flint_protocol::wire::TaskDescriptor

pub mod convert;
mod program;
pub mod spill;
mod task;

pub use program::{ActionError, ActionFuture, ActionResult, ActionRunner, ProgramOutcome};
pub use task::{
    BroadcastFuture, BroadcastSource, BuildSide, Chunk, MAX_WARM_MEMORY, OutputSink, TaskInstance,
    WarmInstance,
};

use flint_protocol::ids::ModuleHash;
use flint_protocol::wire::AppErrorKind;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::OnceCell;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/flint.wit",
        world: "flint-job",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::flint::job::types as wit;
use bindings::{FlintJob, FlintJobPre};

/// The interface version this host speaks, read from the WIT world (`flint-wit`).
pub const INTERFACE_VERSION: u32 = flint_wit::INTERFACE_VERSION;

/// How often the epoch advances; deadlines are checked (and long guest computations yield
/// to the runtime) at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("not WebAssembly: the file does not start with the `\\0asm` header")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build the job for wasm32-wasip2 with the Flint guest SDK"
    )]
    CoreModule,
    #[error(
        "not a Flint job: the component exports no `flint:job/job` interface (it exports: {exports})"
    )]
    NotAJob { exports: String },
    #[error(
        "the component was built against interface {found}, this host speaks {expected}; rebuild it with a matching guest SDK"
    )]
    InterfaceVersion { found: String, expected: String },
    #[error("the component imports functions Flint does not provide: {0}")]
    UnknownImports(String),
    #[error("compiling the component: {0}")]
    Compile(String),
    #[error("component bytes do not match their hash {0}")]
    HashMismatch(ModuleHash),
    #[error("fetching the component: {0}")]
    Fetch(String),
    #[error("compiled-component cache: {0}")]
    Cache(String),
    #[error("instantiating the component: {0}")]
    Instantiate(String),
    #[error("{0}")]
    Limit(LimitHit),
    #[error("guest trapped: {message}")]
    Trap {
        message: String,
        detail: Vec<String>,
    },
    /// A host call of the task failed (its output or its spill store): the typed error.
    #[error("{}", .0.chain.join(": "))]
    Host(flint_protocol::wire::TaskError),
    /// The guest's own error; `kind` when it wraps an error the host reported.
    #[error("{message}")]
    Guest {
        message: String,
        causes: Vec<String>,
        kind: Option<AppErrorKind>,
    },
}

impl SandboxError {
    /// The message and its causes, outermost first.
    pub fn chain(&self) -> Vec<String> {
        match self {
            SandboxError::Trap { detail, .. } => std::iter::once(self.to_string())
                .chain(detail.iter().cloned())
                .collect(),
            SandboxError::Guest {
                message, causes, ..
            } => std::iter::once(message.clone())
                .chain(causes.iter().cloned())
                .collect(),
            SandboxError::Host(e) => e.chain.clone(),
            other => vec![other.to_string()],
        }
    }

    /// Whether loading or linking failed, which no retry can fix.
    pub fn is_bad_module(&self) -> bool {
        matches!(
            self,
            SandboxError::NotWasm
                | SandboxError::CoreModule
                | SandboxError::NotAJob { .. }
                | SandboxError::InterfaceVersion { .. }
                | SandboxError::UnknownImports(_)
                | SandboxError::Compile(_)
        )
    }
}

/// A sandbox limit that ended a guest.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LimitHit {
    #[error(
        "memory limit hit: the guest asked for {desired} bytes of memory, over its cap of {cap} bytes ({setting})"
    )]
    Memory {
        cap: u64,
        desired: u64,
        /// The setting that gave the cap.
        setting: &'static str,
    },
    #[error("deadline hit: the guest ran past its budget of {budget:?} ({setting})")]
    Deadline {
        budget: Duration,
        /// The setting that gave the budget.
        setting: &'static str,
    },
}

/// Settings of one store.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    pub memory_bytes: u64,
    /// The setting the memory cap comes from, named when it is hit.
    pub memory_setting: &'static str,
    /// `None`: no deadline.
    pub deadline: Option<Duration>,
    /// The setting the deadline comes from, named when it is hit.
    pub deadline_setting: &'static str,
    /// Cap on captured stdout and on captured stderr, each.
    pub output_bytes: usize,
}

/// The data of one store.
pub(crate) struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    /// When the running call must end, the budget it had and the setting that gave it
    /// (read by the epoch callback; reset for each task a warm instance runs).
    deadline: Option<(Instant, Duration, &'static str)>,
    /// Where the current task's output starts in the captured stdout and stderr (a warm
    /// instance's pipes hold its earlier tasks' too).
    output_from: (usize, usize),
    /// What each of the pipes takes in all.
    output_cap: usize,
    actions: Option<Arc<dyn ActionRunner>>,
    broadcasts: Option<Arc<dyn BroadcastSource>>,
    /// Output and spills, for a task's store.
    task: Option<task::TaskIo>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl GuestState {
    /// Peak linear memory the guest reached.
    fn peak_memory(&self) -> u64 {
        self.limiter.peak
    }

    fn stdout(&self) -> String {
        let out = self.stdout.contents();
        String::from_utf8_lossy(out.get(self.output_from.0..).unwrap_or_default()).into_owned()
    }

    fn stderr(&self) -> String {
        let out = self.stderr.contents();
        String::from_utf8_lossy(out.get(self.output_from.1..).unwrap_or_default()).into_owned()
    }

    /// Bytes captured so far on stdout and stderr.
    fn output_len(&self) -> (usize, usize) {
        (self.stdout.contents().len(), self.stderr.contents().len())
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Limiter {
    cap: u64,
    setting: &'static str,
    peak: u64,
    /// Linear memory now (the largest memory's size).
    current: u64,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            return Err(LimitHit::Memory {
                cap: self.cap,
                desired: desired as u64,
                setting: self.setting,
            }
            .into());
        }
        self.peak = self.peak.max(desired as u64);
        self.current = self.current.max(desired as u64);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Settings of a process's sandbox.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// Instances alive at once (tasks in flight plus driver programs).
    pub max_instances: u32,
    /// Largest memory any store may be given.
    pub max_memory_bytes: u64,
    /// Where compiled components are kept across runs; `None`: memory only.
    pub cache_dir: Option<PathBuf>,
    /// Count the Wasm instructions guests execute (fuel), for accounting. Costs guest
    /// speed, so it is a separate engine: see [`Sandbox::metered`].
    pub fuel: bool,
}

/// A component compiled and linked, ready to instantiate cheaply.
pub struct LoadedJob {
    pub hash: ModuleHash,
    pre: FlintJobPre<GuestState>,
}

/// How a component was obtained, for task metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadInfo {
    /// Compiled now (cold), as opposed to loaded from the disk cache or already in memory.
    pub compiled: bool,
    /// Time spent compiling or loading; 0 when it was already in memory.
    pub ms: u64,
}

type LoadCell = OnceCell<Arc<LoadedJob>>;

/// Compiled components a sandbox keeps in memory. One that goes is loaded again from the
/// disk cache when asked for (milliseconds); a running application's stays alive through
/// its own reference. Without a bound, every component ever submitted to a long-running
/// driver or executor stayed compiled in its memory.
const MAX_LOADED: usize = 16;

/// Drops the least recently used entries of `map` (by the stamp beside each) past `keep`.
fn keep_recent<K: Copy + Eq + std::hash::Hash, V>(map: &mut HashMap<K, (V, u64)>, keep: usize) {
    while map.len() > keep {
        let Some(oldest) = map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) else {
            return;
        };
        map.remove(&oldest);
    }
}

/// Engine, linker and the compiled-component cache of one process.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    cache_dir: Option<PathBuf>,
    /// Compiled components in memory, each with when it was last asked for: at most
    /// [`MAX_LOADED`], least recently used out first.
    loaded: Mutex<HashMap<ModuleHash, (Arc<LoadCell>, u64)>>,
    /// Loads so far: the clock of `loaded`.
    loads: std::sync::atomic::AtomicU64,
    opts: SandboxOptions,
    /// The fuel-metering twin, made on first use.
    metered: std::sync::OnceLock<Arc<Sandbox>>,
}

impl Sandbox {
    pub fn new(opts: SandboxOptions) -> Result<Arc<Sandbox>, SandboxError> {
        let mut pool = PoolingAllocationConfig::new();
        let instances = opts.max_instances.max(1);
        pool.total_component_instances(instances);
        pool.total_core_instances(instances * 8);
        pool.total_memories(instances * 2);
        pool.total_tables(instances * 8);
        pool.total_stacks(instances);
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(8);
        pool.max_component_instance_size(1 << 20);
        pool.max_core_instance_size(1 << 20);
        pool.table_elements(100_000);
        pool.max_memory_size(opts.max_memory_bytes.min(4 << 30) as usize);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .wasm_component_model(true)
            .max_wasm_stack(1 << 20)
            .consume_fuel(opts.fuel)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `FLINT_WASM_PROFILER=perfmap` names guest functions for `perf` (a developer's
        // switch; it changes no behaviour).
        if std::env::var("FLINT_WASM_PROFILER").as_deref() == Ok("perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine =
            Engine::new(&config).map_err(|e| SandboxError::Instantiate(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Instantiate(format!("{e:#}")))?;
        bindings::flint::job::host::add_to_linker::<GuestState, HasSelf<GuestState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SandboxError::Instantiate(format!("{e:#}")))?;
        bindings::flint::job::task_host::add_to_linker::<GuestState, HasSelf<GuestState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SandboxError::Instantiate(format!("{e:#}")))?;
        bindings::flint::job::types::add_to_linker::<GuestState, HasSelf<GuestState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| SandboxError::Instantiate(format!("{e:#}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("flint-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| SandboxError::Instantiate(format!("starting the epoch thread: {e}")))?;
        Ok(Arc::new(Sandbox {
            engine,
            linker,
            cache_dir: opts.cache_dir.clone(),
            loaded: Mutex::new(HashMap::new()),
            loads: Default::default(),
            opts,
            metered: std::sync::OnceLock::new(),
        }))
    }

    /// This sandbox with fuel metering on (itself if it meters already). Components are
    /// compiled for it separately: metering instruments the code.
    pub fn metered(self: &Arc<Self>) -> Result<Arc<Sandbox>, SandboxError> {
        if self.opts.fuel {
            return Ok(self.clone());
        }
        if let Some(m) = self.metered.get() {
            return Ok(m.clone());
        }
        let m = Sandbox::new(SandboxOptions {
            fuel: true,
            ..self.opts.clone()
        })?;
        Ok(self.metered.get_or_init(|| m).clone())
    }

    /// Whether guests of this sandbox meter fuel.
    fn meters(&self) -> bool {
        self.opts.fuel
    }

    /// The compiled component for `hash`; `fetch` is awaited only when neither memory nor
    /// the disk cache has it. Concurrent callers for one hash share one compile.
    pub async fn load<F, Fut>(
        &self,
        hash: ModuleHash,
        fetch: F,
    ) -> Result<(Arc<LoadedJob>, LoadInfo), SandboxError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, String>>,
    {
        let cell = {
            let now = self
                .loads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut map = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(hash).or_default();
            entry.1 = now;
            let cell = entry.0.clone();
            keep_recent(&mut map, MAX_LOADED);
            cell
        };
        if let Some(job) = cell.get() {
            return Ok((job.clone(), LoadInfo::default()));
        }
        let mut info = LoadInfo::default();
        let job = cell
            .get_or_try_init(|| async {
                let started = Instant::now();
                let component = match self.load_cached(hash) {
                    Some(c) => c,
                    None => {
                        let bytes = fetch().await.map_err(SandboxError::Fetch)?;
                        let c = self.compile(hash, bytes).await?;
                        info.compiled = true;
                        c
                    }
                };
                let job = self.link(hash, &component)?;
                info.ms = started.elapsed().as_millis() as u64;
                Ok::<_, SandboxError>(Arc::new(job))
            })
            .await?;
        Ok((job.clone(), info))
    }

    /// Checks and compiles bytes given directly (the driver's own copy).
    pub async fn load_bytes(
        &self,
        bytes: Vec<u8>,
    ) -> Result<(Arc<LoadedJob>, LoadInfo), SandboxError> {
        let hash = hash_bytes(&bytes);
        self.load(hash, || async move { Ok(bytes) }).await
    }

    fn cache_path(&self, hash: ModuleHash) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!("{}-{:016x}.cwasm", hash.to_hex(), h.finish())))
    }

    fn load_cached(&self, hash: ModuleHash) -> Option<Component> {
        let path = self.cache_path(hash)?;
        let bytes = std::fs::read(&path).ok()?;
        // Marked as used, for the pruning that keeps the newest (see `prune_cache`).
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        // SAFETY: the file is one this host wrote itself from `precompile_component` with
        // an engine of the same compatibility hash (in the name); code is never accepted
        // precompiled from elsewhere. A corrupt file fails deserialization's checks and
        // is recompiled.
        match unsafe { Component::deserialize(&self.engine, &bytes) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unusable compiled-component cache entry: {e:#}");
                None
            }
        }
    }

    async fn compile(&self, hash: ModuleHash, bytes: Vec<u8>) -> Result<Component, SandboxError> {
        if hash_bytes(&bytes) != hash {
            return Err(SandboxError::HashMismatch(hash));
        }
        check_header(&bytes)?;
        let engine = self.engine.clone();
        let serialized = tokio::task::spawn_blocking(move || engine.precompile_component(&bytes))
            .await
            .map_err(|e| SandboxError::Compile(e.to_string()))?
            .map_err(|e| SandboxError::Compile(format!("{e:#}")))?;
        if let Some(path) = self.cache_path(hash) {
            match write_atomically(&path, &serialized) {
                Ok(()) => prune_cache(path.parent(), MAX_CACHED),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "could not write the compiled-component cache: {e}")
                }
            }
        }
        // SAFETY: `serialized` was produced just now by this engine.
        unsafe { Component::deserialize(&self.engine, &serialized) }
            .map_err(|e| SandboxError::Compile(format!("{e:#}")))
    }

    fn link(&self, hash: ModuleHash, component: &Component) -> Result<LoadedJob, SandboxError> {
        // The most telling error first: a job built for another interface version (which
        // would also import what this host lacks), then imports this host does not
        // provide, then a component that is no job at all.
        let interface = check_interface(&self.engine, component);
        if let Err(e @ SandboxError::InterfaceVersion { .. }) = interface {
            return Err(e);
        }
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| SandboxError::UnknownImports(format!("{e:#}")))?;
        interface?;
        let pre = FlintJobPre::new(pre).map_err(|e| SandboxError::NotAJob {
            exports: format!("{e:#}"),
        })?;
        Ok(LoadedJob { hash, pre })
    }

    /// A fresh store with the given limits; `actions` only for driver programs,
    /// `broadcasts` only for tasks.
    fn store(
        &self,
        limits: &StoreLimits,
        actions: Option<Arc<dyn ActionRunner>>,
        broadcasts: Option<Arc<dyn BroadcastSource>>,
    ) -> Store<GuestState> {
        let stdout = MemoryOutputPipe::new(limits.output_bytes);
        let stderr = MemoryOutputPipe::new(limits.output_bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut store = Store::new(
            &self.engine,
            GuestState {
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter {
                    cap: limits.memory_bytes,
                    setting: limits.memory_setting,
                    peak: 0,
                    current: 0,
                },
                deadline: limits
                    .deadline
                    .map(|b| (Instant::now() + b, b, limits.deadline_setting)),
                output_from: (0, 0),
                output_cap: limits.output_bytes,
                actions,
                broadcasts,
                task: None,
                stdout,
                stderr,
            },
        );
        store.limiter(|s| &mut s.limiter);
        if self.opts.fuel {
            // Metering, not limiting: the count starts at the top and only goes down.
            let _ = store.set_fuel(u64::MAX);
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| match ctx.data().deadline {
            Some((at, budget, setting)) if Instant::now() >= at => {
                Err(LimitHit::Deadline { budget, setting }.into())
            }
            // Yield at every tick so that a long guest computation never holds a runtime
            // thread hostage (heartbeats and shuffle serving share it).
            _ => Ok(UpdateDeadline::Yield(1)),
        });
        store
    }
}

impl LoadedJob {
    /// Instantiates into `store` and checks the interface version the guest reports.
    async fn instantiate(&self, store: &mut Store<GuestState>) -> Result<FlintJob, SandboxError> {
        let job = self
            .pre
            .instantiate_async(&mut *store)
            .await
            .map_err(|e| classify(e, store))?;
        let v = job
            .flint_job_job()
            .call_interface_version(&mut *store)
            .await
            .map_err(|e| classify(e, store))?;
        if v != INTERFACE_VERSION {
            return Err(SandboxError::InterfaceVersion {
                found: format!("{}@{} version {v}", flint_wit::PACKAGE, flint_wit::SEMVER),
                expected: format!("version {INTERFACE_VERSION}"),
            });
        }
        Ok(job)
    }
}

/// Maps a wasmtime error from a guest call to what happened, with the guest's stderr tail
/// (a panic message) when it trapped.
fn classify(err: wasmtime::Error, store: &Store<GuestState>) -> SandboxError {
    if let Some(hit) = err.downcast_ref::<LimitHit>() {
        return SandboxError::Limit(hit.clone());
    }
    let message = match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => {
            "stack overflow: the guest exhausted its call stack (deep or unbounded recursion)"
                .to_string()
        }
        // Rust guests keep their stack in linear memory below the data: overflowing it
        // reads or writes out of bounds.
        Some(wasmtime::Trap::MemoryOutOfBounds) => {
            "out-of-bounds memory access (in a Rust guest, most often a stack overflow from deep recursion)"
                .to_string()
        }
        Some(trap) => trap.to_string(),
        None => err.to_string(),
    };
    let mut detail: Vec<String> = Vec::new();
    let stderr = store.data().stderr();
    let tail = tail_chars(stderr.trim_end(), 4096);
    if !tail.is_empty() {
        detail.push(format!("guest stderr: {tail}"));
    }
    for cause in err.chain().skip(1) {
        let s = cause.to_string();
        if s != message {
            detail.push(s);
        }
    }
    SandboxError::Trap { message, detail }
}

fn tail_chars(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A guest-returned error chain as a sandbox error; the guest wrote it, so it is
/// bounded before anything carries it further.
fn guest_error(e: wit::ErrorChain) -> SandboxError {
    let mut chain =
        flint_protocol::wire::bound_chain(std::iter::once(e.message).chain(e.causes).collect())
            .into_iter();
    SandboxError::Guest {
        message: chain.next().unwrap_or_default(),
        causes: chain.collect(),
        kind: e.kind.map(convert::kind_from_wit),
    }
}

/// The result of a guest call: its value, its own error, or what stopped it.
fn unwrap_call<T>(
    r: wasmtime::Result<Result<T, wit::ErrorChain>>,
    store: &Store<GuestState>,
) -> Result<T, SandboxError> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(chain)) => Err(guest_error(chain)),
        Err(e) => Err(classify(e, store)),
    }
}

pub fn hash_bytes(bytes: &[u8]) -> ModuleHash {
    ModuleHash(Sha256::digest(bytes).into())
}

fn check_header(bytes: &[u8]) -> Result<(), SandboxError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(SandboxError::NotWasm);
    }
    // Core modules have layer 0 (`01 00 00 00`); components `0d 00 01 00`.
    if bytes[6..8] == [0, 0] {
        return Err(SandboxError::CoreModule);
    }
    Ok(())
}

fn check_interface(engine: &Engine, component: &Component) -> Result<(), SandboxError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let (package, semver) = (flint_wit::PACKAGE, flint_wit::SEMVER);
    let expected = format!("{package}@{semver}");
    let job_prefix = format!("{package}/job");
    match exports.iter().find(|n| n.starts_with(&job_prefix)) {
        None => {
            return Err(SandboxError::NotAJob {
                exports: if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                },
            });
        }
        Some(n) if *n != format!("{job_prefix}@{semver}") => {
            return Err(SandboxError::InterfaceVersion {
                found: n.replace("/job", ""),
                expected,
            });
        }
        Some(_) => {}
    }
    Ok(())
}

/// Compiled components a cache directory keeps (a few to tens of MB each): those used
/// least recently go when one more is written. Without a bound a tenant submitting
/// distinct components filled the disk of the driver and of every executor.
const MAX_CACHED: usize = 64;

/// Removes the `.cwasm` files of `dir` but the `keep` most recently used (written or
/// loaded: loading sets a file's modification time). Files another process removes or
/// writes meanwhile are no error; neither is a directory that cannot be read.
fn prune_cache(dir: Option<&std::path::Path>, keep: usize) {
    let Some(Ok(entries)) = dir.map(std::fs::read_dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    for (_, p) in files.drain(keep..) {
        let _ = std::fs::remove_file(p);
    }
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl LimitHit {
    /// The setting whose cap was hit.
    pub fn setting(&self) -> &'static str {
        match self {
            LimitHit::Memory { setting, .. } | LimitHit::Deadline { setting, .. } => setting,
        }
    }

    /// The limit, as the wire names it.
    pub fn limit(&self) -> flint_protocol::wire::Limit {
        match self {
            LimitHit::Memory { .. } => flint_protocol::wire::Limit::Memory,
            LimitHit::Deadline { .. } => flint_protocol::wire::Limit::Deadline,
        }
    }
}

/// How a task's sandbox failure is reported to the driver.
impl From<SandboxError> for flint_protocol::wire::TaskError {
    fn from(e: SandboxError) -> Self {
        use flint_protocol::wire::{Limit, TaskErrorKind};
        if let SandboxError::Host(e) = e {
            return e;
        }
        let kind = match &e {
            SandboxError::Limit(hit) => TaskErrorKind::Limit(hit.limit()),
            SandboxError::Trap { .. } => TaskErrorKind::Trap,
            // The SDK names a limit its operators hit (one key's values larger than the
            // task's memory): the same code over the same partition hits it again. A
            // guest that claims one only ends its own job sooner.
            SandboxError::Guest {
                kind: Some(AppErrorKind::Limit { limit }),
                ..
            } if limit == Limit::Memory.setting() => TaskErrorKind::Limit(Limit::Memory),
            // The SDK could not decode the task's input into the row type.
            SandboxError::Guest {
                kind: Some(AppErrorKind::BadInput),
                ..
            } => TaskErrorKind::BadInput,
            SandboxError::Guest { .. } => TaskErrorKind::Guest,
            // The driver compiled the same bytes: a compile that fails here is more
            // likely this host's trouble than the component's, so it may be retried.
            SandboxError::Compile(_) => TaskErrorKind::Io,
            e if e.is_bad_module() => TaskErrorKind::BadModule,
            _ => TaskErrorKind::Io,
        };
        flint_protocol::wire::TaskError {
            kind,
            chain: e.chain(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_directory_keeps_the_most_recently_used_compiled_components() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for (name, age) in [
            ("a.cwasm", 50),
            ("b.cwasm", 10),
            ("c.cwasm", 90),
            ("d.cwasm", 30),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            let f = std::fs::File::options().append(true).open(&p).unwrap();
            f.set_modified(t0 + std::time::Duration::from_secs(age))
                .unwrap();
        }
        std::fs::write(dir.path().join("other.txt"), b"not a component").unwrap();
        prune_cache(Some(dir.path()), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a.cwasm", "c.cwasm", "other.txt"]);
    }

    #[test]
    fn the_least_recently_used_go_past_the_bound() {
        let mut map: HashMap<u32, ((), u64)> = HashMap::new();
        for (k, at) in [(1, 5), (2, 1), (3, 9), (4, 3)] {
            map.insert(k, ((), at));
        }
        keep_recent(&mut map, 2);
        let mut left: Vec<u32> = map.keys().copied().collect();
        left.sort();
        assert_eq!(left, [1, 3]);
        keep_recent(&mut map, 5);
        assert_eq!(map.len(), 2);
    }
}
