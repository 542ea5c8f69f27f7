//! Spark-style settings: `--conf KEY=VALUE` and config files of `key = value` lines.
//! Every key is declared once, in the `settings!` table below, with its kind, default,
//! scope and doc; an unknown key or a bad value is an error that names it (and the file
//! and line it came from). [`Settings`] is the typed view, parsed once from a [`Conf`]:
//! code reads `settings.task_memory`, never a string key.
//!
//! The scope says who may set a key: a submitter may set [`Scope::App`] keys freely,
//! [`Scope::Capped`] keys only at or below the driver's own value (the cluster's bound,
//! which the tenants file can lower per tenant), and never a [`Scope::Cluster`] key.

use crate::scheduler::{Exclusion, JobPolicy, Speculation};
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A byte size: `512`, `64k`, `128m`, `2g`.
    Bytes,
    /// A duration: `500ms`, `2s`, `5m`, `1h`.
    Duration,
    /// A positive whole number.
    Count,
    /// `true` or `false`.
    Bool,
    /// A positive number: `3`, `1.5`.
    Number,
    /// A number in (0, 1].
    Fraction,
    /// `FAIR` or `FIFO`.
    Mode,
}

/// Who may set a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Any application, for itself.
    App,
    /// An application may ask for less than the driver's value, not more: a bound that
    /// protects the driver and the other tenants.
    Capped,
    /// Only the operator, on `flint driver` or `flint executor`.
    Cluster,
}

pub struct KeyDef {
    pub key: &'static str,
    pub kind: Kind,
    /// `None`: unset unless given.
    pub default: Option<&'static str>,
    pub scope: Scope,
    pub doc: &'static str,
}

/// FAIR or FIFO scheduling between jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulingMode {
    Fair,
    Fifo,
}

/// A value of a setting, read from its validated text.
trait FromSetting: Sized {
    fn from_setting(v: Option<&str>) -> Self;
}

impl FromSetting for u64 {
    fn from_setting(v: Option<&str>) -> Self {
        v.and_then(parse_bytes).unwrap_or(0)
    }
}

impl FromSetting for Duration {
    fn from_setting(v: Option<&str>) -> Self {
        v.and_then(parse_duration).unwrap_or_default()
    }
}

impl FromSetting for u32 {
    fn from_setting(v: Option<&str>) -> Self {
        v.and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

impl FromSetting for Option<u32> {
    fn from_setting(v: Option<&str>) -> Self {
        v.and_then(|v| v.parse().ok())
    }
}

impl FromSetting for bool {
    fn from_setting(v: Option<&str>) -> Self {
        v.and_then(parse_bool).unwrap_or(false)
    }
}

impl FromSetting for f64 {
    fn from_setting(v: Option<&str>) -> Self {
        v.and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }
}

impl FromSetting for SchedulingMode {
    fn from_setting(v: Option<&str>) -> Self {
        match v {
            Some(v) if v.eq_ignore_ascii_case("fifo") => SchedulingMode::Fifo,
            _ => SchedulingMode::Fair,
        }
    }
}

macro_rules! settings {
    ($( $field:ident: $ty:ty = $key:literal, $kind:ident, $default:expr, $scope:ident, $doc:literal; )*) => {
        /// Every setting Flint knows.
        pub const KEYS: &[KeyDef] = &[
            $( KeyDef { key: $key, kind: Kind::$kind, default: $default, scope: Scope::$scope, doc: $doc }, )*
        ];

        /// The settings, typed: parsed once from a validated [`Conf`], defaults filled in.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Settings {
            $( #[doc = $doc] pub $field: $ty, )*
        }

        impl Settings {
            pub fn from_conf(c: &Conf) -> Settings {
                Settings {
                    $( $field: FromSetting::from_setting(c.raw($key)), )*
                }
            }
        }
    };
}

settings! {
    shuffle_partitions: Option<u32> = "shuffle.partitions", Count, None, App,
        "reduce partitions of a shuffle that names none (default: as many as the map side)";
    task_max_failures: u32 = "task.max_failures", Count, Some("4"), App,
        "attempts of one task before its job fails";
    task_memory: u64 = "task.memory", Bytes, Some("2g"), App,
        "cap on a task's guest memory";
    task_deadline: Duration = "task.deadline", Duration, Some("1h"), App,
        "wall-clock budget of one task attempt";
    stage_max_consecutive_attempts: u32 = "stage.max_consecutive_attempts", Count, Some("4"), App,
        "attempts of a stage that lost its shuffle input before its job fails";
    speculation: bool = "speculation", Bool, Some("false"), App,
        "run copies of slow tasks on other executors; the first to finish wins";
    speculation_multiplier: f64 = "speculation.multiplier", Number, Some("3"), App,
        "a task is slow past this many times the stage's median task time";
    speculation_quantile: f64 = "speculation.quantile", Fraction, Some("0.9"), App,
        "fraction of a stage's tasks that must finish before speculation starts";
    speculation_min_runtime: Duration = "speculation.min_runtime", Duration, Some("100ms"), App,
        "tasks that ran less than this are never speculated";
    exclude_on_failure: bool = "exclude_on_failure.enabled", Bool, Some("false"), App,
        "stop giving a job's tasks to executors that keep failing them";
    exclude_stage_max_failed_tasks: u32 = "exclude_on_failure.stage.max_failed_tasks", Count, Some("2"), App,
        "different tasks of a stage failed on an executor before it is excluded for the stage";
    exclude_job_max_failed_tasks: u32 = "exclude_on_failure.job.max_failed_tasks", Count, Some("4"), App,
        "task failures of a job on an executor before it is excluded for the job";
    executor_wait_timeout: Duration = "scheduler.executor_wait_timeout", Duration, Some("60s"), App,
        "how long a job waits while no executor can take its tasks";
    scheduler_mode: SchedulingMode = "scheduler.mode", Mode, Some("FAIR"), Cluster,
        "FAIR: tenants share slots by weight and min share, FIFO inside a tenant; FIFO: jobs in submission order";
    shuffle_fetch_timeout: Duration = "shuffle.fetch_timeout", Duration, Some("30s"), App,
        "time to fetch one shuffle segment before it is a fetch failure";
    executor_decommission_timeout: Duration = "executor.decommission_timeout", Duration, Some("30s"), Cluster,
        "on SIGTERM, how long an executor lets running tasks finish before handing them back";
    executor_cache_memory: u64 = "executor.cache_memory", Bytes, Some("512m"), Cluster,
        "memory an executor keeps cached partitions in at least (storage's floor in executor.memory; it may use more while tasks do not hold it); past it the least recently used go to disk (memory-and-disk) or are dropped (memory-only)";
    executor_memory: u64 = "executor.memory", Bytes, Some("0"), Cluster,
        "memory an executor's tasks and cache share (Spark's unified model): each task is granted task.memory from it, less when it is busy (never below half a slot's share); 0: three quarters of the machine's memory";
    executor_heartbeat_interval: Duration = "executor.heartbeat_interval", Duration, Some("10s"), Cluster,
        "how often executors report";
    executor_timeout: Duration = "executor.timeout", Duration, Some("120s"), Cluster,
        "silence after which an executor is lost";
    shuffle_max_bytes_in_flight: u64 = "shuffle.max_bytes_in_flight", Bytes, Some("48m"), App,
        "shuffle bytes a reduce task fetches at once";
    files_max_partition_bytes: u64 = "files.max_partition_bytes", Bytes, Some("128m"), App,
        "largest input split";
    adaptive_enabled: bool = "adaptive.enabled", Bool, Some("true"), App,
        "re-plan a job at its stage boundaries from the map-output sizes: broadcast small join sides, read small shuffle partitions together";
    adaptive_skew_factor: f64 = "adaptive.skew.factor", Number, Some("5"), App,
        "a join's partition is skewed past this many times its side's median partition (and past adaptive.skew.min_bytes): several tasks read it, each with a share of that side";
    adaptive_skew_min_bytes: u64 = "adaptive.skew.min_bytes", Bytes, Some("256m"), App,
        "a join's partition smaller than this is never split as skewed";
    adaptive_partition_bytes: u64 = "adaptive.partition_bytes", Bytes, Some("64m"), App,
        "what a reduce task reads at most when adaptive execution has it read several small shuffle partitions (fewer, when that keeps every slot busy; Spark's advisoryPartitionSizeInBytes)";
    join_broadcast_threshold: u64 = "join.broadcast_threshold", Bytes, Some("10m"), App,
        "a join side whose map output is at most this is read whole by the other side's tasks instead of both sides being shuffled (a broadcast hash join; 0: never)";
    max_result_size: u64 = "driver.max_result_size", Bytes, Some("1g"), Capped,
        "largest result one action may bring to the driver (collect, take...), and one task";
    task_meter_fuel: bool = "task.meter_fuel", Bool, Some("false"), App,
        "count the Wasm instructions tasks execute (fuel), for accounting; slows guests";
    task_max_output_bytes: u64 = "task.max_output_bytes", Bytes, Some("8g"), App,
        "cap on the bytes one task may output (shuffle segments, text, rows)";
    task_max_spill_bytes: u64 = "task.max_spill_bytes", Bytes, Some("64g"), Capped,
        "disk one task may spill to (operators' runs past their memory budget, map output past the host's buffer)";
    main_deadline: Duration = "driver.main_deadline", Duration, Some("24h"), App,
        "wall-clock budget of the driver program, jobs it waits for included";
    main_memory: u64 = "driver.main_memory", Bytes, Some("1g"), Capped,
        "cap on the driver program's guest memory (collected results land there)";
    max_main_output: u64 = "driver.max_main_output", Bytes, Some("1m"), Capped,
        "captured stdout/stderr of the driver program";
    max_partitions_per_stage: u32 = "driver.max_partitions_per_stage", Count, Some("100000"), Capped,
        "partitions (input pieces, before coalesce) one stage may have";
    max_tasks_per_job: u32 = "driver.max_tasks_per_job", Count, Some("1000000"), Capped,
        "tasks of all stages of one job, and input files of one source";
    max_plan_nodes: u32 = "driver.max_plan_nodes", Count, Some("10000"), Capped,
        "nodes and edges of a job's plan, and operations its stages hold once shared inputs are expanded";
    max_shuffle_blocks: u32 = "driver.max_shuffle_blocks", Count, Some("20000000"), Capped,
        "map outputs times reduce partitions over a job's shuffles (the driver tracks a size for each)";
    max_plan_depth: u32 = "driver.max_plan_depth", Count, Some("2000"), Capped,
        "longest chain of operations from a source to the action";
    max_accumulator_bytes: u64 = "driver.max_accumulator_bytes", Bytes, Some("64m"), Capped,
        "accumulator updates an application holds before its driver program reads them";
    max_broadcast_bytes: u64 = "driver.max_broadcast_bytes", Bytes, Some("512m"), Capped,
        "broadcast values one application keeps on the driver";
    max_apps: u32 = "driver.max_apps", Count, Some("32"), Cluster,
        "driver programs that run at once, over all tenants";
    max_apps_per_tenant: u32 = "driver.max_apps_per_tenant", Count, Some("8"), Cluster,
        "driver programs one tenant runs at once (the tenants file's max_apps_running overrides it)";
    max_component_size: u64 = "driver.max_component_size", Bytes, Some("256m"), Cluster,
        "largest job component a driver accepts";
    component_cache: u64 = "driver.component_cache", Bytes, Some("128m"), Cluster,
        "components a driver keeps after their applications end, least recently used first out: a tenant submitting one it sent before does not send it again (0: none kept)";
}

impl Settings {
    /// The scheduler's per-job failure policy from these settings.
    pub fn job_policy(&self) -> JobPolicy {
        let ms = |d: Duration| d.as_millis() as u64;
        JobPolicy {
            max_task_failures: self.task_max_failures,
            max_stage_attempts: self.stage_max_consecutive_attempts,
            speculation: self.speculation.then(|| Speculation {
                multiplier: self.speculation_multiplier,
                quantile: self.speculation_quantile,
                min_runtime_ms: ms(self.speculation_min_runtime),
            }),
            exclusion: self.exclude_on_failure.then_some(Exclusion {
                max_failed_tasks_per_stage: self.exclude_stage_max_failed_tasks,
                max_failed_tasks_per_job: self.exclude_job_max_failed_tasks,
            }),
            executor_wait_timeout_ms: ms(self.executor_wait_timeout),
            attempt_timeout_ms: Some(ms(self.task_deadline) + ms(self.executor_timeout)),
            pool: Default::default(),
            broadcast_threshold: self.broadcast_threshold(),
            coalesce_target: if self.adaptive_enabled {
                self.adaptive_partition_bytes
            } else {
                0
            },
            skew: self.adaptive_enabled.then_some(crate::dag::Skew {
                factor: self.adaptive_skew_factor,
                min_bytes: self.adaptive_skew_min_bytes,
            }),
        }
    }

    /// The broadcast hash join threshold in force (0 when adaptive execution is off).
    pub fn broadcast_threshold(&self) -> u64 {
        if self.adaptive_enabled {
            self.join_broadcast_threshold
        } else {
            0
        }
    }

    /// The plan and DAG bounds.
    pub fn plan_limits(&self) -> crate::plan::PlanLimits {
        crate::plan::PlanLimits {
            max_nodes: self.max_plan_nodes,
            max_depth: self.max_plan_depth,
            max_partitions_per_stage: self.max_partitions_per_stage,
            max_tasks_per_job: self.max_tasks_per_job,
            max_shuffle_blocks: self.max_shuffle_blocks as u64,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_conf(&Conf::default())
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfError {
    #[error("unknown setting `{key}`{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("bad value `{value}` for `{key}`: expected {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("`{0}` is not of the form KEY=VALUE")]
    NotKeyValue(String),
    #[error("{file}:{line}: {source}")]
    InFile {
        file: String,
        line: usize,
        source: Box<ConfError>,
    },
    #[error(
        "`{key}` is a cluster setting: the operator sets it on `flint driver` or `flint executor`, not an application"
    )]
    ClusterOnly { key: String },
    #[error(
        "`{key}` = {value} is above this cluster's bound of {bound}; ask for less, or ask the operator"
    )]
    AboveBound {
        key: String,
        value: String,
        bound: String,
    },
}

/// Validated settings as given, as text; [`Settings`] is their typed view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conf {
    values: BTreeMap<String, String>,
}

impl Conf {
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfError> {
        let def = lookup(key)?;
        let value = value.trim();
        check(def, value)?;
        self.values.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Parses `KEY=VALUE`.
    pub fn set_pair(&mut self, pair: &str) -> Result<(), ConfError> {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ConfError::NotKeyValue(pair.to_string()))?;
        self.set(k.trim(), v)
    }

    /// Reads a config file's text: `key = value` or `key value` lines, `#` comments.
    pub fn merge_file(&mut self, file: &str, text: &str) -> Result<(), ConfError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = match line.split_once('=') {
                Some(kv) => kv,
                None => line
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| ConfError::NotKeyValue(line.to_string()))
                    .map_err(|e| in_file(file, i + 1, e))?,
            };
            let v = v.trim().trim_matches('"');
            self.set(k.trim(), v).map_err(|e| in_file(file, i + 1, e))?;
        }
        Ok(())
    }

    /// `other`'s settings win.
    pub fn overlay(&mut self, other: &Conf) {
        for (k, v) in &other.values {
            self.values.insert(k.clone(), v.clone());
        }
    }

    /// An application's settings over the driver's (`self`): refused if they set a
    /// cluster key, or a capped key above the driver's value.
    pub fn for_application(&self, app: &Conf) -> Result<Conf, ConfError> {
        for (key, value) in &app.values {
            let Some(def) = KEYS.iter().find(|d| d.key == key) else {
                continue;
            };
            match def.scope {
                Scope::App => {}
                Scope::Cluster => return Err(ConfError::ClusterOnly { key: key.clone() }),
                Scope::Capped => {
                    let (asked, bound) =
                        (self.magnitude(key, Some(value)), self.magnitude(key, None));
                    if let (Some(asked), Some(bound)) = (asked, bound)
                        && asked > bound
                    {
                        return Err(ConfError::AboveBound {
                            key: key.clone(),
                            value: value.clone(),
                            bound: self.raw(key).unwrap_or_default().to_string(),
                        });
                    }
                }
            }
        }
        let mut out = self.clone();
        out.overlay(app);
        Ok(out)
    }

    /// A size, count or duration setting as one number (bytes, units or ms), to compare;
    /// `value` instead of this conf's own when given.
    pub fn magnitude(&self, key: &str, value: Option<&str>) -> Option<u64> {
        let def = KEYS.iter().find(|d| d.key == key)?;
        let v = value.or_else(|| self.raw(key))?;
        match def.kind {
            Kind::Bytes => parse_bytes(v),
            Kind::Count => v.parse().ok(),
            Kind::Duration => parse_duration(v).map(|d| d.as_millis() as u64),
            _ => None,
        }
    }

    /// The settings an application may send: all but the cluster's (for `flint run`,
    /// whose settings configure the local cluster and its one application at once).
    pub fn application_pairs(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .filter(|(k, _)| {
                KEYS.iter()
                    .find(|d| d.key == k.as_str())
                    .is_some_and(|d| d.scope != Scope::Cluster)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn pairs(&self) -> Vec<(String, String)> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Conf, ConfError> {
        let mut c = Conf::default();
        for (k, v) in pairs {
            c.set(k, v)?;
        }
        Ok(c)
    }

    /// The value of `key`, or its default.
    fn raw(&self, key: &str) -> Option<&str> {
        let def = KEYS.iter().find(|d| d.key == key)?;
        self.values.get(key).map(String::as_str).or(def.default)
    }

    /// The value given for `key`, if one was (any key, declared or not: guests ask).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether `key` was given (rather than left at its default).
    pub fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The typed view.
    pub fn settings(&self) -> Settings {
        Settings::from_conf(self)
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Some(true),
        "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn in_file(file: &str, line: usize, e: ConfError) -> ConfError {
    ConfError::InFile {
        file: file.to_string(),
        line,
        source: Box::new(e),
    }
}

fn lookup(key: &str) -> Result<&'static KeyDef, ConfError> {
    KEYS.iter().find(|d| d.key == key).ok_or_else(|| {
        let prefix = key.split('.').next().unwrap_or("");
        let near: Vec<&str> = KEYS
            .iter()
            .filter(|d| d.key.starts_with(prefix))
            .map(|d| d.key)
            .collect();
        ConfError::UnknownKey {
            key: key.to_string(),
            hint: if near.is_empty() {
                format!(
                    " (known: {})",
                    KEYS.iter().map(|d| d.key).collect::<Vec<_>>().join(", ")
                )
            } else {
                format!(" (did you mean one of: {}?)", near.join(", "))
            },
        }
    })
}

fn check(def: &KeyDef, value: &str) -> Result<(), ConfError> {
    let (ok, expected) = match def.kind {
        Kind::Bytes => (parse_bytes(value).is_some(), "a size like 512k, 64m or 2g"),
        Kind::Duration => (
            parse_duration(value).is_some_and(|d| !d.is_zero()),
            "a duration like 500ms, 2s or 5m",
        ),
        Kind::Count => (
            value.parse::<u32>().is_ok_and(|n| n > 0),
            "a whole number above 0",
        ),
        Kind::Bool => (parse_bool(value).is_some(), "true or false"),
        Kind::Mode => (
            value.eq_ignore_ascii_case("fair") || value.eq_ignore_ascii_case("fifo"),
            "FAIR or FIFO",
        ),
        Kind::Number => (
            value.parse::<f64>().is_ok_and(|n| n.is_finite() && n > 0.0),
            "a number above 0",
        ),
        Kind::Fraction => (
            value.parse::<f64>().is_ok_and(|n| n > 0.0 && n <= 1.0),
            "a number in (0, 1]",
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(ConfError::BadValue {
            key: def.key.to_string(),
            value: value.to_string(),
            expected,
        })
    }
}

pub fn parse_bytes(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let v = v.strip_suffix('b').unwrap_or(&v);
    let (num, mult) = match v.chars().last()? {
        'k' => (&v[..v.len() - 1], 1u64 << 10),
        'm' => (&v[..v.len() - 1], 1 << 20),
        'g' => (&v[..v.len() - 1], 1 << 30),
        't' => (&v[..v.len() - 1], 1 << 40),
        _ => (v, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "s" | "" => n.checked_mul(1000)?,
        "m" | "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_and_defaults_apply() {
        let mut c = Conf::default();
        c.set_pair("executor.heartbeat_interval=500ms").unwrap();
        c.set_pair("task.memory = 64m").unwrap();
        let s = c.settings();
        assert_eq!(s.executor_heartbeat_interval, Duration::from_millis(500));
        assert_eq!(s.task_memory, 64 << 20);
        assert_eq!(s.executor_timeout, Duration::from_secs(120));
        assert_eq!(s.task_max_failures, 4);
        assert_eq!(s.shuffle_partitions, None);
        assert_eq!(s.scheduler_mode, SchedulingMode::Fair);
    }

    #[test]
    fn the_job_policy_follows_the_settings() {
        let mut c = Conf::default();
        let p = c.settings().job_policy();
        assert_eq!((p.max_task_failures, p.max_stage_attempts), (4, 4));
        assert!(p.speculation.is_none() && p.exclusion.is_none());
        c.set_pair("speculation=true").unwrap();
        c.set_pair("speculation.quantile=0.5").unwrap();
        c.set_pair("exclude_on_failure.enabled=on").unwrap();
        c.set_pair("stage.max_consecutive_attempts=2").unwrap();
        let p = c.settings().job_policy();
        let spec = p.speculation.unwrap();
        assert_eq!(
            (spec.multiplier, spec.quantile, spec.min_runtime_ms),
            (3.0, 0.5, 100)
        );
        assert_eq!(p.exclusion.unwrap().max_failed_tasks_per_stage, 2);
        assert_eq!(p.max_stage_attempts, 2);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let mut c = Conf::default();
        let e = c.set_pair("task.max_failure=3").unwrap_err().to_string();
        assert!(
            e.contains("unknown setting `task.max_failure`") && e.contains("task.max_failures"),
            "{e}"
        );
        let e = c.set_pair("executor.timeout=soon").unwrap_err().to_string();
        assert!(
            e.contains("`soon`") && e.contains("executor.timeout"),
            "{e}"
        );
        assert!(c.set_pair("task.max_failures=0").is_err());
        assert!(c.set_pair("speculation=maybe").is_err());
        assert!(c.set_pair("speculation.quantile=1.5").is_err());
        assert!(c.set_pair("speculation.multiplier=-1").is_err());
        assert!(c.set_pair("novalue").is_err());
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let mut c = Conf::default();
        c.merge_file(
            "f.conf",
            "# comment\ntask.max_failures 2\nshuffle.partitions = 8\n",
        )
        .unwrap();
        assert_eq!(c.settings().task_max_failures, 2);
        assert_eq!(c.settings().shuffle_partitions, Some(8));
        let e = c
            .merge_file("f.conf", "\n\nbogus.key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.conf:3: unknown setting `bogus.key`"),
            "{e}"
        );
    }

    #[test]
    fn an_application_may_lower_a_bound_not_raise_it_nor_touch_a_cluster_key() {
        let mut driver = Conf::default();
        driver.set_pair("driver.max_result_size=100m").unwrap();
        let app = |pair: &str| {
            let mut c = Conf::default();
            c.set_pair(pair).unwrap();
            c
        };
        let merged = driver
            .for_application(&app("driver.max_result_size=10m"))
            .unwrap();
        assert_eq!(merged.settings().max_result_size, 10 << 20);
        let e = driver
            .for_application(&app("driver.max_result_size=1g"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("above this cluster's bound of 100m"), "{e}");
        // The default is the bound where the driver set none.
        assert!(
            Conf::default()
                .for_application(&app("driver.max_partitions_per_stage=200000"))
                .is_err()
        );
        let e = driver
            .for_application(&app("executor.timeout=1s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster setting"), "{e}");
        assert!(driver.for_application(&app("task.memory=8g")).is_ok());
    }

    #[test]
    fn every_key_has_a_typed_field_and_parses_its_default() {
        for def in KEYS {
            if let Some(d) = def.default {
                check(def, d).unwrap_or_else(|e| panic!("default of {}: {e}", def.key));
            }
        }
        assert_eq!(Settings::default().max_plan_depth, 2000);
    }
}
