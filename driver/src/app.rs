//! One submitted application: its driver program runs in a sandbox on the driver, and
//! each action it takes (`run-action`) becomes a job on the cluster.

use crate::cluster::{Event, JobSpec};
use crate::output::OutputCommit;
use crate::splits;
use crate::tenants::{Tenant, Tenants};
use flint_executor_host::sandbox::{
    self, ActionFuture, ActionRunner, Sandbox, SandboxError, StoreLimits, wit,
};
use flint_protocol::conf::Conf;
use flint_protocol::dag::{JobDag, build_dag, take_round};
use flint_protocol::ids::{JobId, ModuleHash};
use flint_protocol::plan::{
    Action, FnRef, LogicalPlan, Malformed, Node, NodeIndex, Op, PlanError, ReadFormat, ShuffleSide,
    StorageLevel, WriteFormat,
};
use flint_protocol::scheduler::{JobPolicy, Pool};
use flint_protocol::wire::{
    AppSummary, SubmitEvent, SubmitRequest, TaskInput, TaskLimits, TaskSuccess,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A broadcast value with its application's capability.
type BroadcastValue = (Arc<Vec<u8>>, [u8; 16]);

/// What every application on this driver shares.
pub struct DriverShared {
    pub events: mpsc::Sender<Event>,
    pub sandbox: Arc<Sandbox>,
    /// Component bytes by hash, for executors that have not compiled them yet.
    pub modules: Mutex<HashMap<ModuleHash, Arc<Vec<u8>>>>,
    pub conf: Conf,
    pub tenants: Tenants,
    /// Per tenant with `max_jobs_running`, the permits for running actions.
    job_permits: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Broadcast values per (application, id), with the application's capability.
    broadcasts: Mutex<HashMap<(u64, u32), BroadcastValue>>,
    /// Broadcast values served to executors, per application.
    broadcast_fetches: Mutex<HashMap<u64, u64>>,
    next_job: AtomicU64,
    next_app: AtomicU64,
}

impl DriverShared {
    pub fn new(
        events: mpsc::Sender<Event>,
        sandbox: Arc<Sandbox>,
        conf: Conf,
        tenants: Tenants,
    ) -> Self {
        DriverShared {
            events,
            sandbox,
            modules: Mutex::new(HashMap::new()),
            conf,
            tenants,
            job_permits: Mutex::new(HashMap::new()),
            broadcasts: Mutex::new(HashMap::new()),
            broadcast_fetches: Mutex::new(HashMap::new()),
            next_job: AtomicU64::new(1),
            next_app: AtomicU64::new(1),
        }
    }

    /// Broadcast `id` of application `app`, for an executor presenting `secret`.
    pub fn broadcast(&self, app: u64, id: u32, secret: &[u8; 16]) -> Result<Arc<Vec<u8>>, String> {
        let map = self.broadcasts.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&(app, id)) {
            Some((v, held)) if flint_executor_host::shuffle::same(held, secret) => {
                *self
                    .broadcast_fetches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(app)
                    .or_default() += 1;
                Ok(v.clone())
            }
            _ => Err(format!(
                "no broadcast {id} of application {app} for this capability"
            )),
        }
    }

    /// Waits until `tenant` may run one more job; the permit ends with the job.
    async fn job_permit(&self, tenant: &Tenant) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let max = tenant.max_jobs_running?;
        let sem = self
            .job_permits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.name.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max.max(1) as usize)))
            .clone();
        sem.acquire_owned().await.ok()
    }
}

fn op(o: wit::Op) -> Op {
    Op {
        func: FnRef(o.function),
        arg: o.arg,
    }
}

/// Converts what the guest sent into the protocol's plan, checking its structure.
pub fn to_logical(plan: wit::Plan, action: wit::Action) -> Result<LogicalPlan, PlanError> {
    let nodes = plan
        .nodes
        .into_iter()
        .map(|n| match n {
            wit::PlanNode::Files(f) => Node::Files {
                paths: f.paths,
                format: match f.format {
                    wit::ReadFormat::Text => ReadFormat::Text,
                    wit::ReadFormat::Csv(c) => ReadFormat::Csv {
                        header: c.header,
                        delimiter: c.delimiter,
                        schema: c.schema,
                    },
                    wit::ReadFormat::JsonLines(schema) => ReadFormat::JsonLines { schema },
                    wit::ReadFormat::Parquet(columns) => ReadFormat::Parquet { columns },
                    wit::ReadFormat::ArrowIpc => ReadFormat::ArrowIpc,
                },
                min_partitions: f.min_partitions,
                malformed: match f.malformed {
                    wit::Malformed::Fail => Malformed::Fail,
                    wit::Malformed::Drop => Malformed::Drop,
                },
                decode: op(f.decode),
            },
            wit::PlanNode::Inline(i) => Node::Inline {
                partitions: i.partitions,
                decode: op(i.decode),
            },
            wit::PlanNode::Narrow(n) => Node::Narrow {
                parent: n.parent as usize,
                apply: op(n.apply),
                name: n.name,
            },
            wit::PlanNode::Shuffle(s) => Node::Shuffle {
                sides: s
                    .sides
                    .into_iter()
                    .map(|side| ShuffleSide {
                        parent: side.parent as usize,
                        write: op(side.write),
                    })
                    .collect(),
                partitions: s.partitions,
                read: op(s.read),
                name: s.name,
            },
            wit::PlanNode::Union(parents) => Node::Union {
                parents: parents.into_iter().map(|p| p as usize).collect(),
            },
            wit::PlanNode::Coalesce(c) => Node::Coalesce {
                parent: c.parent as usize,
                partitions: c.partitions,
            },
            wit::PlanNode::Cache(c) => Node::Cache {
                parent: c.parent as usize,
                id: c.id,
                level: match c.level {
                    wit::StorageLevel::MemoryOnly => StorageLevel::MemoryOnly,
                    wit::StorageLevel::MemoryAndDisk => StorageLevel::MemoryAndDisk,
                    wit::StorageLevel::DiskOnly => StorageLevel::DiskOnly,
                },
                write: op(c.write),
                read: op(c.read),
            },
        })
        .collect();
    let action = match action {
        wit::Action::Collect(c) => Action::Collect {
            encode: op(c.encode),
            limit: c.limit,
        },
        wit::Action::Count => Action::Count,
        wit::Action::Save(s) => Action::Save {
            path: s.path,
            format: match s.format {
                wit::WriteFormat::Text => WriteFormat::Text,
                wit::WriteFormat::Csv => WriteFormat::Csv,
                wit::WriteFormat::JsonLines => WriteFormat::JsonLines,
                wit::WriteFormat::Parquet => WriteFormat::Parquet,
                wit::WriteFormat::ArrowIpc => WriteFormat::ArrowIpc,
            },
            render: op(s.render),
        },
    };
    let plan = LogicalPlan { nodes, action };
    plan.validate()?;
    Ok(plan)
}

/// Infers a CSV source's schema from its first file (Spark's `inferSchema`), as an Arrow
/// IPC schema message for the tasks.
fn infer_csv_schema(
    path: &std::path::Path,
    header: bool,
    delimiter: u8,
) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (schema, _) = arrow_csv::reader::Format::default()
        .with_header(header)
        .with_delimiter(delimiter)
        .infer_schema(file, Some(1000))
        .map_err(|e| format!("inferring the schema of {}: {e}", path.display()))?;
    let mut w =
        arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    w.into_inner().map_err(|e| e.to_string())
}

fn chain(message: impl Into<String>, causes: Vec<String>) -> wit::ErrorChain {
    wit::ErrorChain {
        message: message.into(),
        causes,
    }
}

struct AppActions {
    shared: Arc<DriverShared>,
    app: u64,
    module: ModuleHash,
    conf: Conf,
    events: mpsc::Sender<SubmitEvent>,
    jobs: AtomicU64,
    /// The component's name, for the UI and logs.
    name: String,
    /// Directories `save_*` actions wrote.
    outputs: std::sync::Mutex<Vec<String>>,
    tenant: Tenant,
    /// Capability of the application's cached partitions and broadcast values.
    app_secret: [u8; 16],
    next_broadcast: std::sync::atomic::AtomicU32,
    /// Accumulator updates of committed tasks, per accumulator, not yet read.
    accumulators: Mutex<HashMap<u32, Vec<Vec<u8>>>>,
}

impl ActionRunner for AppActions {
    fn run(&self, plan: wit::Plan, action: wit::Action) -> ActionFuture<'_> {
        Box::pin(self.run_action(plan, action))
    }

    fn setting(&self, key: &str) -> Option<String> {
        self.conf.get(key).map(str::to_string)
    }

    fn broadcast(&self, value: Vec<u8>) -> u32 {
        let id = self.next_broadcast.fetch_add(1, Ordering::Relaxed);
        self.shared
            .broadcasts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((self.app, id), (Arc::new(value), self.app_secret));
        id
    }

    fn broadcast_value(&self, id: u32) -> Option<Arc<Vec<u8>>> {
        self.shared
            .broadcasts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(self.app, id))
            .map(|(v, _)| v.clone())
    }

    fn accumulator_updates(&self, id: u32) -> Vec<Vec<u8>> {
        self.accumulators
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .unwrap_or_default()
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
    /// Runs one job of the application to its end: its results per result partition,
    /// or its failure as an error chain. Keeps the accumulator updates of a success.
    async fn run_job(
        &self,
        job: JobId,
        spec: JobSpec,
    ) -> Result<Vec<Option<TaskSuccess>>, wit::ErrorChain> {
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
        let shutting_down = || flint_protocol::scheduler::JobFailure {
            message: "the driver is shutting down".into(),
            causes: vec![],
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
            Ok((results, updates)) => {
                let mut acc = self.accumulators.lock().unwrap_or_else(|p| p.into_inner());
                for (id, v) in updates {
                    acc.entry(id).or_default().push(v);
                }
                Ok(results)
            }
            Err(f) => {
                let mut causes = vec![f.message];
                causes.extend(f.causes);
                Err(chain(format!("{job} ({action}) failed"), causes))
            }
        }
    }

    async fn run_action(
        &self,
        plan: wit::Plan,
        action: wit::Action,
    ) -> Result<wit::ActionResult, wit::ErrorChain> {
        let mut plan = to_logical(plan, action)
            .map_err(|e| chain("the job's plan is invalid", vec![e.to_string()]))?;
        let job = JobId(self.shared.next_job.fetch_add(1, Ordering::Relaxed));
        self.jobs.fetch_add(1, Ordering::Relaxed);
        let action_name = plan.action.name();
        let fail = |e: String| chain(format!("{job} ({action_name}) failed"), vec![e]);

        // Input splits, per source node.
        let (tx, rx) = oneshot::channel();
        let _ = self
            .shared
            .events
            .send(Event::TotalCores { reply: tx })
            .await;
        let cores = rx.await.unwrap_or(2).max(2);
        let max_split = self.conf.bytes("files.max_partition_bytes");
        let mut sources: HashMap<NodeIndex, Vec<TaskInput>> = HashMap::new();
        for i in 0..plan.nodes.len() {
            let node = &mut plan.nodes[i];
            if let Node::Inline { partitions, decode } = node {
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
                decode,
            } = node
            else {
                continue;
            };
            for p in paths.iter() {
                self.tenant
                    .check_path("read", p)
                    .map_err(|e| fail(e.to_string()))?;
            }
            let (list, fmt) = (paths.clone(), format.clone());
            let min = (*min_partitions).max(cores);
            let s = tokio::task::spawn_blocking(move || match fmt {
                ReadFormat::Parquet { .. } => splits::plan_units(&list, true, min, max_split),
                ReadFormat::ArrowIpc => splits::plan_units(&list, false, min, max_split),
                _ => splits::plan(&list, min, max_split),
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
            // Each file too: a link inside an allowed directory may point out of it.
            for split in &s {
                self.tenant
                    .check_path("read", &split.path)
                    .map_err(|e| fail(e.to_string()))?;
            }
            if let ReadFormat::Csv {
                header,
                delimiter,
                schema: schema @ None,
            } = format
                && let Some(first) = s.first()
            {
                let (path, h, d) = (std::path::PathBuf::from(&first.path), *header, *delimiter);
                *schema = Some(
                    tokio::task::spawn_blocking(move || infer_csv_schema(&path, h, d))
                        .await
                        .map_err(|e| fail(e.to_string()))?
                        .map_err(fail)?,
                );
            }
            let inputs = s
                .into_iter()
                .map(|split| TaskInput::Split {
                    path: split.path,
                    format: format.clone(),
                    malformed: *malformed,
                    start: split.start,
                    end: split.end,
                    decode: decode.clone(),
                })
                .collect();
            sources.insert(i, inputs);
        }
        let dag = build_dag(
            &plan,
            &|n| sources.get(&n).map_or(0, |s| s.len() as u32),
            self.conf.count("shuffle.partitions"),
        )
        .map_err(|e| fail(e.to_string()))?;
        let output = match &plan.action {
            Action::Save { path, format, .. } => {
                self.tenant
                    .check_path("write", path)
                    .map_err(|e| fail(e.to_string()))?;
                Some(Arc::new(
                    OutputCommit::prepare(path, job, format.extension())
                        .map_err(|e| fail(e.to_string()))?,
                ))
            }
            _ => None,
        };
        let max_result = self.conf.bytes("driver.max_result_size");
        let limits = TaskLimits {
            memory_bytes: self.conf.bytes("task.memory"),
            deadline_ms: self.conf.duration("task.deadline").as_millis() as u64,
            max_bytes_in_flight: self.conf.bytes("shuffle.max_bytes_in_flight"),
            max_result_bytes: max_result,
            fetch_timeout_ms: self.conf.duration("shuffle.fetch_timeout").as_millis() as u64,
            max_output_bytes: self.conf.bytes("task.max_output_bytes"),
            meter_fuel: self.conf.flag("task.meter_fuel") || self.tenant.meter_fuel,
        };
        let policy = JobPolicy {
            pool: Pool {
                name: self.tenant.name.clone(),
                weight: self.tenant.weight,
                min_share: self.tenant.min_share,
                max_slots: self.tenant.max_slots,
            },
            ..self.conf.job_policy()
        };
        let spec_of = |dag: JobDag, output: Option<Arc<OutputCommit>>| JobSpec {
            app: self.app,
            dag,
            module: self.module,
            sources: sources.clone(),
            output,
            limits: limits.clone(),
            policy: policy.clone(),
            name: self.name.clone(),
            action: action_name.to_string(),
            tenant: self.tenant.name.clone(),
            progress: self.events.clone(),
            shuffle_secret: rand::random(),
            app_secret: self.app_secret,
        };
        let total = dag.result_stage().partitions;
        let results = match plan.action {
            // `take`: partitions in rounds, each its own job, until enough rows came back.
            Action::Collect {
                limit: Some(limit), ..
            } if total > 0 && dag.result_reads_cheaply() => {
                let (mut results, mut found, mut scanned, mut job) = (Vec::new(), 0u64, 0u32, job);
                loop {
                    let end = scanned
                        .saturating_add(take_round(limit, found, scanned))
                        .min(total);
                    let round = spec_of(dag.with_result_partitions(scanned..end), None);
                    let got = self.run_job(job, round).await?;
                    found += got
                        .iter()
                        .map(|r| match r {
                            Some(TaskSuccess::Rows { rows, .. }) => *rows,
                            _ => 0,
                        })
                        .sum::<u64>();
                    results.extend(got);
                    scanned = end;
                    if found >= limit || scanned >= total {
                        break results;
                    }
                    job = JobId(self.shared.next_job.fetch_add(1, Ordering::Relaxed));
                    self.jobs.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => match self
                .run_job(job, spec_of(dag.clone(), output.clone()))
                .await
            {
                Ok(results) => results,
                Err(e) => {
                    if let Some(out) = &output {
                        out.abort();
                    }
                    return Err(e);
                }
            },
        };
        match plan.action {
            Action::Save { .. } => {
                let out = output.expect("save prepared its output");
                let o = out.clone();
                let path = tokio::task::spawn_blocking(move || o.commit_job())
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .map_err(|e| {
                        out.abort();
                        fail(e.to_string())
                    })?;
                self.outputs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(path.display().to_string());
                Ok(wit::ActionResult::Saved)
            }
            Action::Count => Ok(wit::ActionResult::Count(
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
                let mut bytes = 0u64;
                for r in results.into_iter().flatten() {
                    if let TaskSuccess::Rows { batches, .. } = r {
                        for b in batches {
                            bytes += b.len() as u64;
                            if bytes > max_result {
                                return Err(fail(format!(
                                    "collect's result exceeds driver.max_result_size ({max_result} bytes); write large results with save_as_text instead"
                                )));
                            }
                            all.push(b);
                        }
                    }
                }
                Ok(wit::ActionResult::Rows(all))
            }
        }
    }
}

/// Runs an application to its end. Errors are chains, outermost first.
pub async fn run_application(
    shared: Arc<DriverShared>,
    req: SubmitRequest,
    tenant: Tenant,
    events: mpsc::Sender<SubmitEvent>,
) -> Result<AppSummary, Vec<String>> {
    let started = Instant::now();
    let app = shared.next_app.fetch_add(1, Ordering::Relaxed);
    let mut conf = shared.conf.clone();
    let job_conf = Conf::from_pairs(&req.conf).map_err(|e| vec![e.to_string()])?;
    conf.overlay(&job_conf);
    tenant.bound(&mut conf).map_err(|e| vec![e.to_string()])?;
    let name = req.name.clone();
    let bytes = Arc::new(req.component);
    let module = sandbox::hash_bytes(&bytes);
    let (loaded, _) = shared
        .sandbox
        .load_bytes(bytes.to_vec())
        .await
        .map_err(|e| load_error(&name, e))?;
    shared
        .modules
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(module, bytes);
    tracing::info!(app, %name, %module, "application started");
    let actions = Arc::new(AppActions {
        shared: shared.clone(),
        app,
        module,
        conf: conf.clone(),
        events,
        jobs: AtomicU64::new(0),
        name: name.clone(),
        outputs: Default::default(),
        tenant: tenant.clone(),
        app_secret: rand::random(),
        next_broadcast: std::sync::atomic::AtomicU32::new(1),
        accumulators: Mutex::new(HashMap::new()),
    });
    let limits = StoreLimits {
        memory_bytes: conf.bytes("task.memory"),
        deadline: Some(conf.duration("driver.main_deadline")),
        deadline_setting: "driver.main_deadline",
        output_bytes: conf.bytes("driver.max_main_output") as usize,
    };
    let mut store = shared.sandbox.store(&limits, Some(actions.clone()));
    let result = async {
        let instance = loaded.instantiate(&mut store).await?;
        match instance
            .flint_job_job()
            .call_main(&mut store, &req.args)
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sandbox::guest_error(e)),
            Err(trap) => Err(sandbox::classify(trap, &store)),
        }
    }
    .await;
    let (tx, rx) = oneshot::channel();
    let _ = shared.events.send(Event::AppDone { app, reply: tx }).await;
    shared
        .broadcasts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(a, _), _| *a != app);
    let executors = rx.await.unwrap_or_default();
    shared
        .modules
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&module);
    match result {
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
            outputs: std::mem::take(
                &mut *actions.outputs.lock().unwrap_or_else(|p| p.into_inner()),
            ),
            stdout: store.data().stdout(),
            broadcast_fetches: shared
                .broadcast_fetches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&app)
                .unwrap_or(0),
            executors,
        }),
        Err(e) => {
            let mut c = vec![format!("job program {name} failed")];
            c.extend(e.chain());
            Err(c)
        }
    }
}

fn load_error(name: &str, e: SandboxError) -> Vec<String> {
    let mut c = vec![format!("cannot load {name}")];
    c.extend(e.chain());
    c
}
