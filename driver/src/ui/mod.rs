//! The driver's window: an event sink that folds scheduler events into [`UiState`] and
//! appends them to the event log, and the web UI (HTML pages, a JSON API behind each,
//! Prometheus metrics) served from that state, live or from logs (`flint history`).
//!
//! JSON API (the same data as the pages):
//! - `GET /api/v1/jobs`: every job, without task lists.
//! - `GET /api/v1/jobs/{job}`: one job, its stages with task counts and totals, and
//!   `adaptive`: what adaptive execution changed in its stages, and why.
//! - `GET /api/v1/jobs/{job}/stages/{stage}`: one stage with every task attempt and its
//!   metrics, the duration quantiles and the map output bytes the driver tracked.
//! - `GET /api/v1/executors`: every executor the driver has seen.
//! - `GET /api/v1/usage?tenant=NAME`: what a tenant's jobs consumed (task-seconds, fuel
//!   when metered, peak guest memory, bytes read, shuffled and output), per job and in
//!   total; without `tenant`, every tenant's.
//! - `GET /metrics`: Prometheus text format.
//!
//! Everything is read-only. On a loopback address anyone on the host may read it; on
//! any other address every request needs a token (`Authorization: Bearer TOKEN`, or the
//! password of HTTP basic auth, so a browser asks for it): the admin token sees every
//! job, a tenant's token sees that tenant's jobs and usage only, and no metrics.

mod html;
pub mod state;

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use flint_protocol::events::Event;
use serde_json::json;
use state::{JobView, StageView, UiState};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Error)]
pub enum EventLogError {
    #[error("event log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not an event: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// Appends events as JSON lines, one file per job, each line written as it happens.
struct EventLog {
    dir: PathBuf,
    /// Distinguishes the logs of successive drivers writing to one directory.
    prefix: String,
    open: HashMap<u64, (PathBuf, std::fs::File)>,
}

impl EventLog {
    fn write(file: &mut std::fs::File, path: &FsPath, ev: &Event) {
        let mut line = serde_json::to_string(ev).unwrap_or_default();
        line.push('\n');
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!("event log {}: {e}", path.display());
        }
    }

    fn record(&mut self, ev: &Event, state: &UiState) {
        if let Event::JobStarted { job, .. } = ev {
            let path = self
                .dir
                .join(format!("{}-job-{:05}.jsonl", self.prefix, job.0));
            match std::fs::File::create(&path) {
                Ok(mut f) => {
                    // The executors as they are now, so the log stands alone.
                    for e in state.executors.values().filter(|e| e.state == "alive") {
                        let added = Event::ExecutorAdded {
                            at_ms: e.added_ms,
                            executor: flint_protocol::ids::ExecutorId(e.id),
                            addr: e.addr.clone(),
                            cores: e.cores,
                            metrics_addr: e.metrics_addr.clone(),
                        };
                        Self::write(&mut f, &path, &added);
                    }
                    self.open.insert(job.0, (path, f));
                }
                Err(e) => tracing::warn!("event log {}: {e}", path.display()),
            }
        }
        match ev.job() {
            Some(job) => {
                if let Some((path, f)) = self.open.get_mut(&job.0) {
                    Self::write(f, path, ev);
                }
            }
            None => {
                for (path, f) in self.open.values_mut() {
                    Self::write(f, path, ev);
                }
            }
        }
        if let Event::JobEnded { job, .. } = ev {
            self.open.remove(&job.0);
        }
    }
}

/// Where scheduler events go: the UI's state, and the event log when there is one.
pub struct EventSink {
    state: Mutex<UiState>,
    log: Mutex<Option<EventLog>>,
    /// Live (auto-refreshing pages) or replayed from logs.
    live: bool,
}

impl EventSink {
    pub fn live(event_log: Option<PathBuf>) -> Result<Arc<EventSink>, EventLogError> {
        let log = match event_log {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|source| EventLogError::Io {
                    path: dir.clone(),
                    source,
                })?;
                Some(EventLog {
                    dir,
                    prefix: format!("driver-{}", now_ms()),
                    open: HashMap::new(),
                })
            }
            None => None,
        };
        Ok(Arc::new(EventSink {
            state: Mutex::new(UiState::default()),
            log: Mutex::new(log),
            live: true,
        }))
    }

    /// Replays every `*.jsonl` log of `dir`, in name order.
    pub fn replay(dir: &FsPath) -> Result<Arc<EventSink>, EventLogError> {
        let io = |path: &FsPath| {
            let path = path.to_path_buf();
            move |source| EventLogError::Io { path, source }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        let mut state = UiState::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let ev: Event =
                    serde_json::from_str(line).map_err(|source| EventLogError::Parse {
                        path: path.clone(),
                        line: i + 1,
                        source,
                    })?;
                state.apply(&ev);
            }
        }
        Ok(Arc::new(EventSink {
            state: Mutex::new(state),
            log: Mutex::new(None),
            live: false,
        }))
    }

    pub fn emit(&self, ev: Event) {
        let mut state = self.state();
        state.apply(&ev);
        if let Some(log) = self.log.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            log.record(&ev, &state);
        }
    }

    pub fn heartbeat(&self, executor: u32) {
        self.state().heartbeat(executor, now_ms());
    }

    pub fn state(&self) -> MutexGuard<'_, UiState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Who may read the UI.
#[derive(Clone)]
pub struct Access {
    /// Whether a request without a token is refused (the UI is not on loopback).
    required: bool,
    admin_sha256: Option<String>,
    tenants: crate::tenants::Tenants,
}

impl Access {
    /// Open on loopback, token-only elsewhere. Off loopback an admin token is required.
    pub fn new(
        listener: &std::net::TcpListener,
        admin_token: Option<String>,
        tenants: crate::tenants::Tenants,
    ) -> std::io::Result<Access> {
        let required = !listener.local_addr()?.ip().is_loopback();
        if required && admin_token.is_none() {
            return Err(std::io::Error::other(
                "a web UI on a non-loopback address needs an admin token",
            ));
        }
        Ok(Access {
            required,
            admin_sha256: admin_token.map(|t| crate::tenants::hash_token(&t)),
            tenants,
        })
    }

    /// Anyone may read (`flint history` on loopback).
    pub fn open() -> Access {
        Access {
            required: false,
            admin_sha256: None,
            tenants: Default::default(),
        }
    }

    fn viewer(&self, token: Option<&str>) -> Option<Viewer> {
        let Some(token) = token else {
            return (!self.required).then_some(Viewer::Admin);
        };
        if let Some(admin) = &self.admin_sha256
            && flint_protocol::constant_time_eq(
                admin.as_bytes(),
                crate::tenants::hash_token(token).as_bytes(),
            )
        {
            return Some(Viewer::Admin);
        }
        if !self.tenants.is_open()
            && let Ok(t) = self.tenants.authenticate(Some(token))
        {
            return Some(Viewer::Tenant(t.name));
        }
        // A wrong token on an open UI still reads it as anyone would.
        (!self.required).then_some(Viewer::Admin)
    }
}

/// Who is reading: the admin (or anyone, on an open UI), or one tenant.
#[derive(Clone, Debug, PartialEq)]
pub enum Viewer {
    Admin,
    Tenant(String),
}

impl Viewer {
    fn sees(&self, j: &JobView) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::Tenant(t) => &j.tenant == t,
        }
    }
}

/// The token of a request: a bearer token, or the password of basic auth.
fn request_token(parts: &Parts) -> Option<String> {
    let h = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = h.strip_prefix("Bearer ") {
        return Some(t.trim().to_string());
    }
    let b64 = h.strip_prefix("Basic ")?;
    let decoded = flint_transport::tls::base64_decode(b64.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map_or(text.clone(), |(_, p)| p.to_string()),
    )
}

/// The UI's state: the events folded so far, and who may read them.
pub struct Ui {
    sink: Arc<EventSink>,
    access: Access,
}

impl FromRequestParts<Arc<Ui>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Arc<Ui>) -> Result<Viewer, Response> {
        ui.access
            .viewer(request_token(parts).as_deref())
            .ok_or_else(|| {
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Basic realm=\"flint\"")],
                    "this UI needs a token: the admin token, or a tenant's",
                )
                    .into_response()
            })
    }
}

/// The UI's routes over `sink`.
pub fn router(sink: Arc<EventSink>, access: Access) -> Router {
    Router::new()
        .route("/", get(jobs_page))
        .route("/jobs/{job}", get(job_page))
        .route("/jobs/{job}/stages/{stage}", get(stage_page))
        .route("/executors", get(executors_page))
        .route("/api/v1/jobs", get(jobs_api))
        .route("/api/v1/jobs/{job}", get(job_api))
        .route("/api/v1/jobs/{job}/stages/{stage}", get(stage_api))
        .route("/api/v1/executors", get(executors_api))
        .route("/api/v1/usage", get(usage_api))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(Ui { sink, access }))
}

/// Serves the UI on `listener` until the process ends.
pub fn spawn(
    listener: std::net::TcpListener,
    sink: Arc<EventSink>,
    access: Access,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(sink, access)).await {
            tracing::error!("web UI stopped: {e}");
        }
    });
    Ok(())
}

/// Binds the UI's address: `port` on `host`; port 4040 (the default) moves on to the next
/// free one as Spark does, port 0 picks any.
pub fn bind(host: &str, port: u16) -> std::io::Result<std::net::TcpListener> {
    let tries = if port == 4040 { 16 } else { 1 };
    let mut last = None;
    for p in port..port.saturating_add(tries) {
        match std::net::TcpListener::bind((host, p)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port to try")))
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

fn job_summary(j: &JobView, now: u64) -> serde_json::Value {
    json!({
        "id": j.id,
        "app": j.app,
        "name": j.name,
        "action": j.action,
        "tenant": j.tenant,
        "state": j.state,
        "started_ms": j.started_ms,
        "ended_ms": j.ended_ms,
        "duration_ms": j.duration_ms(now),
        "stages_done": j.stages_done(),
        "stages_total": j.stages.len(),
        "error": j.error,
        "adaptive": j.adaptive,
    })
}

fn stage_summary(s: &StageView, now: u64) -> serde_json::Value {
    json!({
        "index": s.info.index,
        "name": s.info.name,
        "parents": s.info.parents,
        "partitions": s.info.partitions,
        "shuffle_write": s.info.shuffle_write,
        "state": s.state(),
        "partitions_done": s.partitions_done(),
        "task_counts": s.counts(),
        "duration_ms_quantiles": s.durations(),
        "totals": s.totals(),
        "map_output_bytes": s.map_output_bytes,
        "started_ms": s.started_ms,
        "attempt": s.attempt,
        "completed_ms": s.completed_ms,
        "running_for_ms": s.tasks.iter().filter(|t| t.state == "running").map(|t| t.duration_ms(now)).max(),
    })
}

async fn jobs_api(State(ui): State<Arc<Ui>>, viewer: Viewer) -> Json<serde_json::Value> {
    let now = now_ms();
    let st = ui.sink.state();
    Json(json!(
        st.jobs
            .values()
            .filter(|j| viewer.sees(j))
            .map(|j| job_summary(j, now))
            .collect::<Vec<_>>()
    ))
}

async fn job_api(State(ui): State<Arc<Ui>>, viewer: Viewer, Path(job): Path<u64>) -> Response {
    let now = now_ms();
    let st = ui.sink.state();
    let Some(j) = st.jobs.get(&job).filter(|j| viewer.sees(j)) else {
        return not_found(format!("no job {job}"));
    };
    let mut v = job_summary(j, now);
    v["stages"] = json!(
        j.stages
            .iter()
            .map(|s| stage_summary(s, now))
            .collect::<Vec<_>>()
    );
    Json(v).into_response()
}

async fn stage_api(
    State(ui): State<Arc<Ui>>,
    viewer: Viewer,
    Path((job, stage)): Path<(u64, u32)>,
) -> Response {
    let now = now_ms();
    let st = ui.sink.state();
    let Some(s) = st
        .jobs
        .get(&job)
        .filter(|j| viewer.sees(j))
        .and_then(|j| j.stages.get(stage as usize))
    else {
        return not_found(format!("no stage {job}.{stage}"));
    };
    let mut v = stage_summary(s, now);
    v["tasks"] = json!(s.tasks);
    Json(v).into_response()
}

#[derive(serde::Deserialize)]
struct UsageQuery {
    tenant: Option<String>,
}

async fn usage_api(
    State(ui): State<Arc<Ui>>,
    viewer: Viewer,
    axum::extract::Query(q): axum::extract::Query<UsageQuery>,
) -> Json<serde_json::Value> {
    let st = ui.sink.state();
    // A tenant reads its own usage, whatever it asks for.
    let tenant = match viewer {
        Viewer::Tenant(t) => Some(t),
        Viewer::Admin => q.tenant,
    };
    match tenant {
        Some(t) => Json(json!(st.usage(&t))),
        None => Json(json!(
            st.tenants().iter().map(|t| st.usage(t)).collect::<Vec<_>>()
        )),
    }
}

async fn executors_api(State(ui): State<Arc<Ui>>, _viewer: Viewer) -> Json<serde_json::Value> {
    let st = ui.sink.state();
    Json(json!(st.executors.values().collect::<Vec<_>>()))
}

async fn jobs_page(State(ui): State<Arc<Ui>>, viewer: Viewer) -> Html<String> {
    let st = ui.sink.state();
    let jobs: Vec<&JobView> = st.jobs.values().filter(|j| viewer.sees(j)).collect();
    Html(html::jobs(&jobs, ui.sink.live, now_ms()))
}

async fn job_page(State(ui): State<Arc<Ui>>, viewer: Viewer, Path(job): Path<u64>) -> Response {
    let st = ui.sink.state();
    match st.jobs.get(&job).filter(|j| viewer.sees(j)) {
        Some(j) => Html(html::job(j, ui.sink.live, now_ms())).into_response(),
        None => not_found(format!("no job {job}")),
    }
}

async fn stage_page(
    State(ui): State<Arc<Ui>>,
    viewer: Viewer,
    Path((job, stage)): Path<(u64, u32)>,
) -> Response {
    let st = ui.sink.state();
    match st
        .jobs
        .get(&job)
        .filter(|j| viewer.sees(j))
        .and_then(|j| Some((j, j.stages.get(stage as usize)?)))
    {
        Some((j, s)) => Html(html::stage(j, s, ui.sink.live, now_ms())).into_response(),
        None => not_found(format!("no stage {job}.{stage}")),
    }
}

async fn executors_page(State(ui): State<Arc<Ui>>, _viewer: Viewer) -> Html<String> {
    let st = ui.sink.state();
    Html(html::executors(&st, ui.sink.live, now_ms()))
}

/// Driver metrics in Prometheus text format, computed from the same state as the pages;
/// the admin's only, since they count every tenant's work.
async fn metrics(State(ui): State<Arc<Ui>>, viewer: Viewer) -> Response {
    if viewer != Viewer::Admin {
        return (StatusCode::FORBIDDEN, "metrics are the admin's").into_response();
    }
    let st = ui.sink.state();
    let mut m = Metrics::default();
    for j in st.jobs.values() {
        m.count("flint_jobs_total", &[("state", &j.state)], 1);
        for s in &j.stages {
            for t in &s.tasks {
                m.count("flint_tasks_total", &[("state", &t.state)], 1);
                if t.speculative {
                    m.count("flint_speculative_tasks_total", &[], 1);
                }
                if t.state == "succeeded" {
                    m.count(
                        "flint_shuffle_write_bytes_total",
                        &[],
                        t.metrics.shuffle_write_bytes,
                    );
                    m.count("flint_spill_bytes_total", &[], t.metrics.spill_bytes);
                    m.count("flint_spill_runs_total", &[], t.metrics.spill_count);
                    m.count(
                        "flint_shuffle_read_bytes_total",
                        &[("from", "remote")],
                        t.metrics.shuffle_read_remote_bytes,
                    );
                    m.count(
                        "flint_shuffle_read_bytes_total",
                        &[("from", "local")],
                        t.metrics.shuffle_read_local_bytes,
                    );
                    let hit = if t.metrics.compiled { "miss" } else { "hit" };
                    m.count("flint_compile_cache_total", &[("result", hit)], 1);
                }
                if t.error.first().is_some_and(|e| e.starts_with("Limit")) {
                    m.count("flint_sandbox_limit_hits_total", &[], 1);
                }
            }
        }
    }
    for e in st.executors.values() {
        m.gauge("flint_executors", &[("state", &e.state)], 1);
        if e.state == "alive" {
            m.gauge("flint_slots", &[], e.cores as u64);
            m.gauge("flint_slots_busy", &[], e.tasks_running);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}

/// A tiny Prometheus text-format writer: `(name, labels) → value`, counters and gauges.
#[derive(Default)]
pub struct Metrics {
    values: std::collections::BTreeMap<(String, String), (u64, &'static str)>,
}

impl Metrics {
    fn put(&mut self, name: &str, labels: &[(&str, &str)], v: u64, kind: &'static str) {
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        self.values
            .entry((name.to_string(), labels))
            .or_insert((0, kind))
            .0 += v;
    }
    pub fn count(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.put(name, labels, v, "counter");
    }
    pub fn gauge(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.put(name, labels, v, "gauge");
    }
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), (v, kind)) in &self.values {
            if name != last {
                out.push_str(&format!("# TYPE {name} {kind}\n"));
                last = name;
            }
            if labels.is_empty() {
                out.push_str(&format!("{name} {v}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        }
        out
    }
}

/// A plain HTTP/1.0 GET of `path` from `addr`, with `token` if given; the body of a 200
/// answer.
pub fn http_get(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("no answer")
        )));
    }
    Ok(body.to_string())
}

/// `flint usage`'s report.
pub fn usage_text(r: &state::UsageReport) -> String {
    fn line(u: &state::Usage) -> String {
        format!(
            "{} task attempt(s), {:.2} task-seconds, fuel {}, peak guest memory {} bytes, read {} bytes, shuffled {} bytes written / {} read, output {} bytes",
            u.task_attempts,
            u.task_seconds,
            u.fuel.map_or("not metered".to_string(), |f| f.to_string()),
            u.peak_memory_bytes,
            u.input_bytes,
            u.shuffle_write_bytes,
            u.shuffle_read_bytes,
            u.output_bytes
        )
    }
    let mut out = format!(
        "tenant {}: {} job(s), {}\n",
        r.tenant,
        r.total.jobs,
        line(&r.total)
    );
    for j in &r.jobs {
        out.push_str(&format!(
            "  job {} {} ({}): {}\n",
            j.job,
            j.name,
            j.state,
            line(&j.usage)
        ));
    }
    out
}
