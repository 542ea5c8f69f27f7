//! One submitted application: its driver program runs in a sandbox on the driver, and
//! each action it takes becomes a job on the cluster. Everything the program asks for is
//! checked against the application's bounds (settings and tenant quotas) before the
//! driver spends memory on it; a bound that is hit is a typed error naming it, for this
//! application only.

use crate::cluster::{Event, JobResults, JobSpec};
use crate::components::Components;
use crate::output::OutputCommit;
use crate::splits::{self, SplitError, SplitLimits};
use crate::tenants::{Tenant, TenantError, Tenants};
use flint_protocol::conf::{Conf, Settings};
use flint_protocol::dag::{DagInputs, JobDag, build_dag_with, take_round};
use flint_protocol::ids::{JobId, ModuleHash};
use flint_protocol::plan::{
    Action, ColumnPredicate, CsvFormat, LogicalPlan, Node, NodeIndex, PlanError, ReadFormat,
};
use flint_protocol::scheduler::{JobPolicy, Pool};
use flint_protocol::wire::{
    AppError, AppErrorKind, AppSummary, PartitionValue, SubmitEvent, TaskInput, TaskLimits,
    TaskResult, TaskSuccess,
};
use flint_sandbox::{
    ActionError, ActionFuture, ActionResult, ActionRunner, Sandbox, SandboxError, StoreLimits,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// A broadcast value with its application's capability.
type BroadcastValue = (Arc<Vec<u8>>, [u8; 16]);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every application on this driver shares.
pub struct DriverShared {
    pub events: mpsc::Sender<Event>,
    pub sandbox: Arc<Sandbox>,
    /// Component bytes by hash: for executors that have not compiled them yet, and for
    /// tenants that submit them again.
    components: Mutex<Components>,
    /// The driver's settings: defaults for applications, and the bounds they may lower.
    pub conf: Conf,
    pub settings: Settings,
    pub tenants: Tenants,
    /// Per tenant with `max_jobs_running`, the permits for running actions.
    job_permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Driver programs at once: per tenant, and over all.
    app_permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    all_apps: Arc<Semaphore>,
    /// Broadcast values per (application, id), with the application's capability.
    broadcasts: Mutex<HashMap<(u64, u32), BroadcastValue>>,
    /// Broadcast values served to executors, per application.
    broadcast_fetches: Mutex<HashMap<u64, u64>>,
    next_job: AtomicU64,
    next_app: AtomicU64,
}

/// An admitted application's place among the driver programs that run: given back when
/// it ends.
pub struct Admission {
    pub app: u64,
    _tenant: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl DriverShared {
    pub fn new(
        events: mpsc::Sender<Event>,
        sandbox: Arc<Sandbox>,
        conf: Conf,
        tenants: Tenants,
    ) -> Self {
        let settings = conf.settings();
        DriverShared {
            events,
            sandbox,
            components: Mutex::new(Components::new(settings.component_cache)),
            all_apps: Arc::new(Semaphore::new(settings.max_apps as usize)),
            conf,
            settings,
            tenants,
            job_permits: Mutex::new(HashMap::new()),
            app_permits: Mutex::new(HashMap::new()),
            broadcasts: Mutex::new(HashMap::new()),
            broadcast_fetches: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            next_app: AtomicU64::new(1),
        }
    }

    /// Who `token` belongs to, as a typed refusal if nobody.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Tenant, AppError> {
        self.tenants
            .authenticate(token)
            .map_err(|e| AppError::refused(e.to_string()))
    }

    /// A place for one more driver program of `tenant`, or a refusal naming the limit
    /// that is full. Refused at once rather than queued: the submitter learns why.
    pub fn admit(&self, tenant: &Tenant) -> Result<Admission, AppError> {
        let (max, limit, quota) = match tenant.max_apps_running {
            Some(n) => (n, "max_apps_running", "the tenants file's max_apps_running"),
            None => (
                self.settings.max_apps_per_tenant,
                "driver.max_apps_per_tenant",
                "driver.max_apps_per_tenant",
            ),
        };
        let sem = lock(&self.app_permits)
            .entry(tenant.name.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(max.max(1) as usize)))
            .clone();
        let mine = sem.try_acquire_owned().map_err(|_| {
            AppError::limit(
                limit,
                format!(
                    "tenant {} already runs {max} applications ({quota} = {max}); submit again when one ends",
                    tenant.name
                ),
            )
        })?;
        let all = self.all_apps.clone().try_acquire_owned().map_err(|_| {
            AppError::limit(
                "driver.max_apps",
                format!(
                    "the driver already runs {} applications (driver.max_apps); submit again when one ends",
                    self.settings.max_apps
                ),
            )
        })?;
        Ok(Admission {
            app: self.next_app.fetch_add(1, Ordering::Relaxed),
            _tenant: mine,
            _all: all,
        })
    }

    /// The bytes of component `module`, while an application runs it (or the driver
    /// still keeps it).
    pub fn module(&self, module: &ModuleHash) -> Option<Arc<Vec<u8>>> {
        lock(&self.components).get(module)
    }

    /// The bytes of component `module`, `len` long, if `tenant` sent them before and
    /// the driver still holds them: the submission need not send them again.
    pub fn component_sent_before(
        &self,
        tenant: &str,
        module: &ModuleHash,
        len: u64,
    ) -> Option<Arc<Vec<u8>>> {
        lock(&self.components).sent_before(tenant, module, len)
    }

    /// Broadcast `id` of application `app`, for an executor presenting `secret`.
    pub fn broadcast(&self, app: u64, id: u32, secret: &[u8; 16]) -> Result<Arc<Vec<u8>>, String> {
        let map = lock(&self.broadcasts);
        match map.get(&(app, id)) {
            Some((v, held)) if flint_protocol::constant_time_eq(held, secret) => {
                *lock(&self.broadcast_fetches).entry(app).or_default() += 1;
                Ok(v.clone())
            }
            _ => Err(format!(
                "no broadcast {id} of application {app} for this capability"
            )),
        }
    }

    /// Waits until `tenant` may run one more job; the permit ends with the job.
    async fn job_permit(&self, tenant: &Tenant) -> Option<OwnedSemaphorePermit> {
        let max = tenant.max_jobs_running?;
        let sem = lock(&self.job_permits)
            .entry(tenant.name.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(max.max(1) as usize)))
            .clone();
        sem.acquire_owned().await.ok()
    }
}

/// Infers a CSV source's schema from a sample of its files (Spark's `inferSchema`), as an
/// Arrow IPC schema message for the tasks and as text for the user to pin it by.
fn infer_csv_schema(
    files: &[std::path::PathBuf],
    c: &CsvFormat,
) -> Result<(Vec<u8>, String), (AppErrorKind, String)> {
    let schema = flint_storage::csv::infer(files, c).map_err(|e| {
        let kind = match e {
            flint_storage::csv::CsvError::Io { .. } => AppErrorKind::Io,
            _ => AppErrorKind::InvalidPlan,
        };
        (kind, e.to_string())
    })?;
    let text = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ");
    let ipc = || -> Result<Vec<u8>, arrow_schema::ArrowError> {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema)?;
        w.finish()?;
        w.into_inner()
    };
    let ipc = ipc().map_err(|e| (AppErrorKind::Driver, e.to_string()))?;
    Ok((ipc, text))
}

/// The partition columns of a source whose every value is an integer (or null): they are
/// read as integers, the others as text (Spark's partition column type inference).
fn partition_types(splits: &[splits::Split]) -> std::collections::HashSet<String> {
    let mut integer = std::collections::HashSet::new();
    let mut text = std::collections::HashSet::new();
    for s in splits {
        for (column, value) in &s.partition {
            match value {
                Some(v) if v.parse::<i64>().is_err() => {
                    text.insert(column.clone());
                }
                _ => {
                    integer.insert(column.clone());
                }
            }
        }
    }
    integer.retain(|c| !text.contains(c));
    integer
}

/// A refused plan: a bound it passes, or its shape.
fn plan_error(e: PlanError) -> ActionError {
    let kind = match e.limit() {
        Some(limit) => AppErrorKind::Limit {
            limit: limit.to_string(),
        },
        None => AppErrorKind::InvalidPlan,
    };
    ActionError::new(kind, "the job's plan was refused", vec![e.to_string()])
}

fn split_error(e: SplitError) -> ActionError {
    let kind = match &e {
        SplitError::Limit { limit, .. } => AppErrorKind::Limit {
            limit: limit.to_string(),
        },
        SplitError::BadGlob { .. } => AppErrorKind::InvalidPlan,
        _ => AppErrorKind::Io,
    };
    ActionError::new(kind, "listing the job's input", vec![e.to_string()])
}

fn tenant_error(e: TenantError) -> ActionError {
    ActionError::new(AppErrorKind::Denied, e.to_string(), Vec::new())
}

fn from_app_error(e: AppError) -> ActionError {
    let mut chain = e.chain.into_iter();
    let message = chain.next().unwrap_or_default();
    ActionError::new(e.kind, message, chain.collect())
}

/// Per source node of a plan, the input of each of its partitions; shared by the jobs
/// of one action (the rounds of a `take`).
type Sources = Arc<HashMap<NodeIndex, Vec<TaskInput>>>;

/// Accumulator updates of committed tasks not yet read, per accumulator, and their size.
#[derive(Default)]
struct PendingUpdates {
    by_id: HashMap<u32, Vec<Vec<u8>>>,
    bytes: u64,
}

struct AppActions {
    shared: Arc<DriverShared>,
    app: u64,
    module: ModuleHash,
    conf: Conf,
    settings: Settings,
    events: mpsc::Sender<SubmitEvent>,
    jobs: AtomicU64,
    /// The component's name, for the UI and logs.
    name: String,
    /// Directories `save_*` actions wrote.
    outputs: Mutex<Vec<String>>,
    /// The CSV schemas inferred for this application's sources, as text.
    inferred: Mutex<Vec<String>>,
    tenant: Tenant,
    /// Capability of the application's cached partitions and broadcast values.
    app_secret: [u8; 16],
    next_broadcast: AtomicU32,
    broadcast_bytes: AtomicU64,
    accumulators: Mutex<PendingUpdates>,
}

impl ActionRunner for AppActions {
    fn run(&self, plan: LogicalPlan) -> ActionFuture<'_> {
        Box::pin(self.run_action(plan))
    }

    fn setting(&self, key: &str) -> Option<String> {
        self.conf.get(key).map(str::to_string)
    }

    fn broadcast(&self, value: Vec<u8>) -> Result<u32, ActionError> {
        let max = self.settings.max_broadcast_bytes;
        let len = value.len() as u64;
        let held = self.broadcast_bytes.fetch_add(len, Ordering::Relaxed) + len;
        if held > max {
            self.broadcast_bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(ActionError::new(
                AppErrorKind::Limit {
                    limit: "driver.max_broadcast_bytes".into(),
                },
                format!(
                    "a broadcast of {len} bytes would make the application's broadcast values {held} bytes, over driver.max_broadcast_bytes ({max} bytes)"
                ),
                Vec::new(),
            ));
        }
        let id = self.next_broadcast.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.broadcasts).insert((self.app, id), (Arc::new(value), self.app_secret));
        Ok(id)
    }

    fn broadcast_value(&self, id: u32) -> Option<Arc<Vec<u8>>> {
        lock(&self.shared.broadcasts)
            .get(&(self.app, id))
            .map(|(v, _)| v.clone())
    }

    fn accumulator_updates(&self, id: u32) -> Vec<Vec<u8>> {
        let mut pending = lock(&self.accumulators);
        let updates = pending.by_id.remove(&id).unwrap_or_default();
        pending.bytes -= updates.iter().map(|u| u.len() as u64).sum::<u64>();
        updates
    }

    fn unpersist(
        &self,
        id: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self
                .shared
                .events
                .send(Event::Unpersist { app: self.app, id })
                .await;
        })
    }
}

impl AppActions {
    /// Runs one job of the application to its end: its results, or its failure. Keeps
    /// the accumulator updates of a success.
    async fn run_job(&self, job: JobId, spec: JobSpec) -> Result<JobResults, ActionError> {
        let action = spec.action.clone();
        let _ = self
            .events
            .send(SubmitEvent::JobStarted {
                job,
                action: action.clone(),
                stages: spec
                    .dag
                    .stages
                    .iter()
                    .map(|s| format!("{} task(s): {}", s.partitions, s.name))
                    .collect(),
                stage_tasks: spec.dag.stages.iter().map(|s| s.partitions).collect(),
            })
            .await;
        // A tenant at its max_jobs_running waits here for one of its jobs to end.
        let _permit = self.shared.job_permit(&self.tenant).await;
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let sent = self
            .shared
            .events
            .send(Event::Submit {
                job,
                spec: Box::new(spec),
                reply: tx,
            })
            .await;
        let shutting_down = || {
            AppError::new(
                AppErrorKind::Driver,
                vec!["the driver is shutting down".into()],
            )
        };
        let outcome = match sent {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(shutting_down())),
            Err(_) => Err(shutting_down()),
        };
        let _ = self
            .events
            .send(SubmitEvent::JobEnded {
                job,
                ok: outcome.is_ok(),
                ms: started.elapsed().as_millis() as u64,
            })
            .await;
        match outcome {
            Ok(mut results) => {
                let mut pending = lock(&self.accumulators);
                pending.bytes += results.accumulator_bytes;
                for (id, v) in std::mem::take(&mut results.updates) {
                    pending.by_id.entry(id).or_default().push(v);
                }
                Ok(results)
            }
            Err(e) => Err(from_app_error(
                e.context(format!("{job} ({action}) failed")),
            )),
        }
    }

    fn next_job(&self) -> JobId {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        JobId(self.shared.next_job.fetch_add(1, Ordering::Relaxed))
    }

    /// The input of every partition of every source the action needs, listing files
    /// within the bounds (splits of all sources together count against
    /// `driver.max_tasks_per_job`) and checking the tenant may read them.
    /// Each source node's inputs, and the bytes it reads (for adaptive planning).
    async fn sources(
        &self,
        plan: &mut LogicalPlan,
    ) -> Result<(Sources, HashMap<NodeIndex, u64>), ActionError> {
        let (tx, rx) = oneshot::channel();
        let _ = self
            .shared
            .events
            .send(Event::TotalCores { reply: tx })
            .await;
        let cores = rx.await.unwrap_or(2).max(2);
        let max_split = self.settings.files_max_partition_bytes;
        let (needed, _) = plan.needed();
        let mut left = self.settings.max_tasks_per_job;
        let mut sources: HashMap<NodeIndex, Vec<TaskInput>> = HashMap::new();
        let mut bytes: HashMap<NodeIndex, u64> = HashMap::new();
        for (i, node) in plan.nodes.iter_mut().enumerate() {
            if !needed[i] {
                continue;
            }
            if let Node::Inline { partitions, decode } = node {
                bytes.insert(i, partitions.iter().map(|p| p.len() as u64).sum());
                let inputs = partitions
                    .iter()
                    .map(|ipc| TaskInput::Inline {
                        ipc: ipc.clone(),
                        decode: decode.clone(),
                    })
                    .collect();
                sources.insert(i, inputs);
                continue;
            }
            let Node::Files {
                paths,
                format,
                min_partitions,
                malformed,
                filter,
                decode,
            } = node
            else {
                continue;
            };
            for p in paths.iter() {
                self.tenant.check_path("read", p).map_err(tenant_error)?;
            }
            if let ReadFormat::Csv(c) = format {
                flint_storage::csv::time_formats(c).map_err(|e| {
                    ActionError::new(
                        AppErrorKind::InvalidPlan,
                        "the job's plan was refused",
                        vec![e.to_string()],
                    )
                })?;
            }
            let limits = SplitLimits {
                max_files: left,
                max_splits: self.settings.max_partitions_per_stage.min(left),
            };
            let (list, fmt) = (paths.clone(), format.clone());
            let min = (*min_partitions).max(cores);
            let s = tokio::task::spawn_blocking(move || match fmt {
                ReadFormat::Parquet { .. } => {
                    splits::plan_units(&list, true, min, max_split, &limits)
                }
                ReadFormat::ArrowIpc => splits::plan_units(&list, false, min, max_split, &limits),
                ReadFormat::Csv(c) => splits::plan(&list, min, max_split, c.multi_line, &limits),
                _ => splits::plan(&list, min, max_split, false, &limits),
            })
            .await
            .map_err(|e| ActionError::new(AppErrorKind::Driver, e.to_string(), Vec::new()))?
            .map_err(split_error)?;
            left = left.saturating_sub(s.len() as u32);
            // Each file too: a link inside an allowed directory may point out of it.
            for split in &s {
                self.tenant
                    .check_path("read", &split.path)
                    .map_err(tenant_error)?;
            }
            if let ReadFormat::Csv(c) = format
                && c.schema.is_none()
            {
                let mut files: Vec<std::path::PathBuf> = Vec::new();
                for split in &s {
                    if files
                        .last()
                        .is_none_or(|f| f.as_os_str() != split.path.as_str())
                    {
                        files.push(split.path.clone().into());
                    }
                }
                let csv = c.clone();
                let (schema, text) =
                    tokio::task::spawn_blocking(move || infer_csv_schema(&files, &csv))
                        .await
                        .map_err(|e| {
                            ActionError::new(AppErrorKind::Driver, e.to_string(), Vec::new())
                        })?
                        .map_err(|e| ActionError::new(e.0, e.1, Vec::new()))?;
                tracing::info!(
                    app = self.app,
                    source = paths.join(","),
                    "inferred CSV schema: {text}"
                );
                lock(&self.inferred).push(format!("{}: {text}", paths.join(", ")));
                c.schema = Some(schema);
            }
            let partition = partition_types(&s);
            let shared = Arc::new(format.clone());
            let shared_filter: Arc<[ColumnPredicate]> = filter.clone().into();
            // Partition pruning: a file whose directory values fail the filter holds no
            // row that passes it.
            let listed = s.len();
            let s: Vec<_> = s
                .into_iter()
                .filter(|split| {
                    filter.iter().all(|p| {
                        let Some((_, value)) = split.partition.iter().find(|(c, _)| *c == p.column)
                        else {
                            return true;
                        };
                        p.passes_partition(value.as_deref(), partition.contains(&p.column))
                            != Some(false)
                    })
                })
                .collect();
            if s.len() < listed {
                tracing::info!(
                    app = self.app,
                    source = paths.join(","),
                    "partition pruning: {} of {listed} splits pass the filter",
                    s.len()
                );
            }
            bytes.insert(i, s.iter().map(|split| split.bytes).sum());
            let inputs = s
                .into_iter()
                .map(|split| TaskInput::Split {
                    filter: shared_filter.clone(),
                    partition: split
                        .partition
                        .into_iter()
                        .map(|(column, value)| PartitionValue {
                            integer: partition.contains(&column),
                            column,
                            value,
                        })
                        .collect(),
                    path: split.path,
                    format: shared.clone(),
                    malformed: *malformed,
                    start: split.start,
                    end: split.end,
                    decode: decode.clone(),
                })
                .collect();
            sources.insert(i, inputs);
        }
        Ok((Arc::new(sources), bytes))
    }

    async fn run_action(&self, mut plan: LogicalPlan) -> Result<ActionResult, ActionError> {
        let limits = self.settings.plan_limits();
        plan.validate(&limits).map_err(plan_error)?;
        let job = self.next_job();
        let action_name = plan.action.name();
        let (sources, source_bytes) = self.sources(&mut plan).await?;
        let dag = build_dag_with(
            &plan,
            &DagInputs {
                source_partitions: &|n| sources.get(&n).map_or(0, |s| s.len() as u32),
                source_bytes: &|n| source_bytes.get(&n).copied(),
                default_shuffle_partitions: self.settings.shuffle_partitions,
                broadcast_threshold: self.settings.broadcast_threshold(),
            },
            &limits,
        )
        .map_err(plan_error)?;
        let output = match &plan.action {
            Action::Save {
                path,
                format,
                options,
                ..
            } => {
                self.tenant
                    .check_path("write", path)
                    .map_err(tenant_error)?;
                let codec = options.compression.unwrap_or(format.default_codec());
                let extension = format.file_suffix(codec);
                let (path, mode, levels) = (path.clone(), options.mode, options.partition_by.len());
                // Blocking: it looks at the file system or lists the bucket.
                let prepared = tokio::task::spawn_blocking(move || {
                    OutputCommit::prepare(&path, job, extension, mode, levels)
                })
                .await
                .map_err(|e| ActionError::new(AppErrorKind::Driver, e.to_string(), Vec::new()))?
                .map_err(|e| ActionError::new(AppErrorKind::Io, e.to_string(), Vec::new()))?;
                match prepared {
                    Some(commit) => Some(Arc::new(commit)),
                    // Mode `ignore` and the output is there: nothing to do.
                    None => return Ok(ActionResult::Saved),
                }
            }
            _ => None,
        };
        let s = &self.settings;
        let max_result = s.max_result_size;
        let limits = TaskLimits {
            memory_bytes: s.task_memory,
            deadline_ms: s.task_deadline.as_millis() as u64,
            max_bytes_in_flight: s.shuffle_max_bytes_in_flight,
            max_result_bytes: max_result,
            fetch_timeout_ms: s.shuffle_fetch_timeout.as_millis() as u64,
            max_output_bytes: s.task_max_output_bytes,
            meter_fuel: s.task_meter_fuel || self.tenant.meter_fuel,
            max_spill_bytes: s.task_max_spill_bytes,
            tenant_spill: self.tenant.max_executor_spill_bytes.map(|max_bytes| {
                flint_protocol::wire::TenantSpill {
                    tenant: self.tenant.name.clone(),
                    max_bytes,
                }
            }),
        };
        let policy = JobPolicy {
            pool: Pool {
                name: self.tenant.name.clone(),
                weight: self.tenant.weight,
                min_share: self.tenant.min_share,
                max_slots: self.tenant.max_slots,
            },
            ..s.job_policy()
        };
        let spec_of = |dag: JobDag, output: Option<Arc<OutputCommit>>, result_budget: u64| {
            let pending = lock(&self.accumulators).bytes;
            JobSpec {
                app: self.app,
                dag,
                module: self.module,
                sources: sources.clone(),
                output,
                limits: TaskLimits {
                    max_result_bytes: result_budget,
                    ..limits.clone()
                },
                policy: policy.clone(),
                name: self.name.clone(),
                action: action_name.to_string(),
                tenant: self.tenant.name.clone(),
                progress: self.events.clone(),
                shuffle_secret: rand::random(),
                app_secret: self.app_secret,
                max_result_bytes: result_budget,
                max_accumulator_bytes: s.max_accumulator_bytes.saturating_sub(pending),
            }
        };
        let total = dag.result_stage().partitions;
        let results = match plan.action {
            // `take`: partitions in rounds, each its own job, until enough rows came back;
            // the rounds share the action's result budget.
            Action::Collect {
                limit: Some(limit), ..
            } if total > 0 && dag.result_reads_cheaply() => {
                let (mut results, mut found, mut scanned, mut job) = (Vec::new(), 0u64, 0u32, job);
                let mut budget = max_result;
                loop {
                    let end = scanned
                        .saturating_add(take_round(limit, found, scanned))
                        .min(total);
                    let round = spec_of(dag.with_result_partitions(scanned..end), None, budget);
                    let got = self.run_job(job, round).await?;
                    budget = budget.saturating_sub(got.result_bytes);
                    found += got
                        .results
                        .iter()
                        .map(|r| match r {
                            Some(TaskSuccess::Rows { rows, .. }) => *rows,
                            _ => 0,
                        })
                        .sum::<u64>();
                    results.extend(got.results);
                    scanned = end;
                    if found >= limit || scanned >= total {
                        break results;
                    }
                    job = self.next_job();
                }
            }
            _ => match self
                .run_job(job, spec_of(dag.clone(), output.clone(), max_result))
                .await
            {
                Ok(r) => r.results,
                Err(e) => {
                    if let Some(out) = output.clone() {
                        let _ = tokio::task::spawn_blocking(move || out.abort()).await;
                    }
                    return Err(e);
                }
            },
        };
        let fail = |kind: AppErrorKind, e: String| {
            ActionError::new(kind, format!("{job} ({action_name}) failed"), vec![e])
        };
        match plan.action {
            Action::Save { .. } => {
                let out = output.expect("save prepared its output");
                let o = out.clone();
                let path = tokio::task::spawn_blocking(move || o.commit_job())
                    .await
                    .map_err(|e| fail(AppErrorKind::Driver, e.to_string()))?
                    .map_err(|e| fail(AppErrorKind::Io, e.to_string()));
                let path = match path {
                    Ok(path) => path,
                    Err(e) => {
                        let _ = tokio::task::spawn_blocking(move || out.abort()).await;
                        return Err(e);
                    }
                };
                lock(&self.outputs).push(path);
                Ok(ActionResult::Saved)
            }
            Action::Count => Ok(ActionResult::Count(
                results
                    .iter()
                    .map(|r| match r {
                        Some(TaskSuccess::Count(n)) => *n,
                        _ => 0,
                    })
                    .sum(),
            )),
            Action::Collect { .. } => {
                let mut all = Vec::new();
                for r in results.into_iter().flatten() {
                    if let TaskSuccess::Rows {
                        result: TaskResult::Direct(batches),
                        ..
                    } = r
                    {
                        all.extend(batches);
                    }
                }
                Ok(ActionResult::Rows(all))
            }
        }
    }
}

/// What a tenant submitted, once admitted and read.
pub struct Application {
    pub admission: Admission,
    pub name: String,
    /// The component's bytes, as they arrived or as the driver kept them from this
    /// tenant's earlier submission.
    pub component: Arc<Vec<u8>>,
    /// The component's hash, checked against its bytes when they arrived.
    pub module: ModuleHash,
    pub args: Vec<String>,
    /// The application's settings over the driver's, within the tenant's quotas.
    pub conf: Conf,
    pub tenant: Tenant,
}

/// Ends an application on the cluster when it is dropped, however it ends: its jobs
/// stop (a submitter that left takes its application with it), its cached data and
/// broadcast values go.
struct AppEnd {
    shared: Arc<DriverShared>,
    app: u64,
    module: ModuleHash,
    holds_module: bool,
    reported: bool,
}

impl Drop for AppEnd {
    fn drop(&mut self) {
        lock(&self.shared.broadcasts).retain(|(a, _), _| *a != self.app);
        lock(&self.shared.broadcast_fetches).remove(&self.app);
        if self.holds_module {
            lock(&self.shared.components).release(&self.module);
        }
        if !self.reported {
            let (events, app) = (self.shared.events.clone(), self.app);
            tokio::spawn(async move {
                let _ = events.send(Event::AppDone { app, reply: None }).await;
            });
        }
    }
}

/// Runs an application to its end.
pub async fn run_application(
    shared: Arc<DriverShared>,
    a: Application,
    events: mpsc::Sender<SubmitEvent>,
) -> Result<AppSummary, AppError> {
    let started = Instant::now();
    let app = a.admission.app;
    let settings = a.conf.settings();
    let name = a.name.clone();
    let bytes = a.component;
    let module = a.module;
    let mut end = AppEnd {
        shared: shared.clone(),
        app,
        module,
        holds_module: false,
        reported: false,
    };
    let (loaded, _) = shared
        .sandbox
        .load(module, || {
            let bytes = bytes.clone();
            async move { Ok(bytes.to_vec()) }
        })
        .await
        .map_err(|e| load_error(&name, e))?;
    lock(&shared.components).hold(module, bytes, &a.tenant.name);
    end.holds_module = true;
    tracing::info!(app, %name, %module, tenant = %a.tenant.name, "application started");
    let actions = Arc::new(AppActions {
        shared: shared.clone(),
        app,
        module,
        conf: a.conf.clone(),
        settings: settings.clone(),
        events,
        jobs: AtomicU64::new(0),
        name: name.clone(),
        outputs: Default::default(),
        inferred: Default::default(),
        tenant: a.tenant.clone(),
        app_secret: rand::random(),
        next_broadcast: AtomicU32::new(1),
        broadcast_bytes: AtomicU64::new(0),
        accumulators: Mutex::new(PendingUpdates::default()),
    });
    let limits = StoreLimits {
        memory_bytes: settings.main_memory,
        memory_setting: "driver.main_memory",
        deadline: Some(settings.main_deadline),
        deadline_setting: "driver.main_deadline",
        output_bytes: settings.max_main_output as usize,
    };
    let outcome = shared
        .sandbox
        .run_program(&loaded, &limits, actions.clone(), &a.args)
        .await;
    let (tx, rx) = oneshot::channel();
    end.reported = true;
    let _ = shared
        .events
        .send(Event::AppDone {
            app,
            reply: Some(tx),
        })
        .await;
    let executors = rx.await.unwrap_or_default();
    let broadcast_fetches = lock(&shared.broadcast_fetches).remove(&app).unwrap_or(0);
    drop(end);
    match outcome.result {
        Ok(()) => Ok(AppSummary {
            elapsed_ms: started.elapsed().as_millis() as u64,
            jobs: actions.jobs.load(Ordering::Relaxed) as u32,
            tasks: executors
                .iter()
                .map(|e| e.tasks_succeeded + e.tasks_failed + e.tasks_killed + e.fetch_failures)
                .sum(),
            failed_tasks: executors.iter().map(|e| e.tasks_failed).sum(),
            killed_tasks: executors.iter().map(|e| e.tasks_killed).sum(),
            speculative_tasks: executors.iter().map(|e| e.tasks_speculated).sum(),
            fetch_failures: executors.iter().map(|e| e.fetch_failures).sum(),
            outputs: std::mem::take(&mut *lock(&actions.outputs)),
            inferred_schemas: std::mem::take(&mut *lock(&actions.inferred)),
            stdout: outcome.stdout,
            broadcast_fetches,
            executors,
        }),
        Err(e) => {
            // A program that failed because an action did keeps that action's kind.
            let kind = match &e {
                SandboxError::Guest {
                    kind: Some(kind), ..
                } => kind.clone(),
                SandboxError::Limit(hit) => AppErrorKind::Limit {
                    limit: hit.setting().to_string(),
                },
                _ => AppErrorKind::Program,
            };
            let mut chain = vec![format!("job program {name} failed")];
            chain.extend(e.chain());
            Err(AppError::new(kind, chain))
        }
    }
}

fn load_error(name: &str, e: SandboxError) -> AppError {
    let mut chain = vec![format!("cannot load {name}")];
    chain.extend(e.chain());
    AppError::new(AppErrorKind::BadComponent, chain)
}

/// A submission's settings: the driver's, overlaid with what the application asked for
/// (cluster keys refused, bounds only lowered), then the tenant's quotas.
pub fn application_conf(
    driver: &Conf,
    asked: &[(String, String)],
    tenant: &Tenant,
) -> Result<Conf, AppError> {
    let refused = |e: String| AppError::refused(e);
    let asked = Conf::from_pairs(asked).map_err(|e| refused(e.to_string()))?;
    let mut conf = driver
        .for_application(&asked)
        .map_err(|e| refused(e.to_string()))?;
    tenant
        .bound(&mut conf)
        .map_err(|e| refused(e.to_string()))?;
    Ok(conf)
}
