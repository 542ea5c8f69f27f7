//! Spark-style settings: `--conf KEY=VALUE` and config files of `key = value` lines.
//! Every key is declared in [`KEYS`]; an unknown key or a bad value is an error that
//! names it (and the file and line it came from).

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

pub struct KeyDef {
    pub key: &'static str,
    pub kind: Kind,
    /// `None`: unset unless given.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// Every setting Flint knows.
pub const KEYS: &[KeyDef] = &[
    KeyDef {
        key: "shuffle.partitions",
        kind: Kind::Count,
        default: None,
        doc: "reduce partitions of a shuffle that names none (default: as many as the map side)",
    },
    KeyDef {
        key: "task.max_failures",
        kind: Kind::Count,
        default: Some("4"),
        doc: "attempts of one task before its job fails",
    },
    KeyDef {
        key: "task.memory",
        kind: Kind::Bytes,
        default: Some("2g"),
        doc: "cap on a task's guest memory",
    },
    KeyDef {
        key: "task.deadline",
        kind: Kind::Duration,
        default: Some("1h"),
        doc: "wall-clock budget of one task attempt",
    },
    KeyDef {
        key: "stage.max_consecutive_attempts",
        kind: Kind::Count,
        default: Some("4"),
        doc: "attempts of a stage that lost its shuffle input before its job fails",
    },
    KeyDef {
        key: "speculation",
        kind: Kind::Bool,
        default: Some("false"),
        doc: "run copies of slow tasks on other executors; the first to finish wins",
    },
    KeyDef {
        key: "speculation.multiplier",
        kind: Kind::Number,
        default: Some("3"),
        doc: "a task is slow past this many times the stage's median task time",
    },
    KeyDef {
        key: "speculation.quantile",
        kind: Kind::Fraction,
        default: Some("0.9"),
        doc: "fraction of a stage's tasks that must finish before speculation starts",
    },
    KeyDef {
        key: "speculation.min_runtime",
        kind: Kind::Duration,
        default: Some("100ms"),
        doc: "tasks that ran less than this are never speculated",
    },
    KeyDef {
        key: "exclude_on_failure.enabled",
        kind: Kind::Bool,
        default: Some("false"),
        doc: "stop giving a job's tasks to executors that keep failing them",
    },
    KeyDef {
        key: "exclude_on_failure.stage.max_failed_tasks",
        kind: Kind::Count,
        default: Some("2"),
        doc: "different tasks of a stage failed on an executor before it is excluded for the stage",
    },
    KeyDef {
        key: "exclude_on_failure.job.max_failed_tasks",
        kind: Kind::Count,
        default: Some("4"),
        doc: "task failures of a job on an executor before it is excluded for the job",
    },
    KeyDef {
        key: "scheduler.executor_wait_timeout",
        kind: Kind::Duration,
        default: Some("60s"),
        doc: "how long a job waits while no executor can take its tasks",
    },
    KeyDef {
        key: "scheduler.mode",
        kind: Kind::Mode,
        default: Some("FAIR"),
        doc: "FAIR: tenants share slots by weight and min share, FIFO inside a tenant; FIFO: jobs in submission order",
    },
    KeyDef {
        key: "shuffle.fetch_timeout",
        kind: Kind::Duration,
        default: Some("30s"),
        doc: "time to fetch one shuffle segment before it is a fetch failure",
    },
    KeyDef {
        key: "executor.decommission_timeout",
        kind: Kind::Duration,
        default: Some("30s"),
        doc: "on SIGTERM, how long an executor lets running tasks finish before handing them back",
    },
    KeyDef {
        key: "executor.cache_memory",
        kind: Kind::Bytes,
        default: Some("512m"),
        doc: "memory an executor keeps cached partitions in; past it the least recently used go to disk (memory-and-disk) or are dropped (memory-only)",
    },
    KeyDef {
        key: "executor.heartbeat_interval",
        kind: Kind::Duration,
        default: Some("10s"),
        doc: "how often executors report",
    },
    KeyDef {
        key: "executor.timeout",
        kind: Kind::Duration,
        default: Some("120s"),
        doc: "silence after which an executor is lost",
    },
    KeyDef {
        key: "shuffle.max_bytes_in_flight",
        kind: Kind::Bytes,
        default: Some("48m"),
        doc: "shuffle bytes a reduce task fetches at once",
    },
    KeyDef {
        key: "files.max_partition_bytes",
        kind: Kind::Bytes,
        default: Some("128m"),
        doc: "largest input split",
    },
    KeyDef {
        key: "driver.max_result_size",
        kind: Kind::Bytes,
        default: Some("1g"),
        doc: "largest result collect may bring to the driver",
    },
    KeyDef {
        key: "task.meter_fuel",
        kind: Kind::Bool,
        default: Some("false"),
        doc: "count the Wasm instructions tasks execute (fuel), for accounting; slows guests",
    },
    KeyDef {
        key: "task.max_output_bytes",
        kind: Kind::Bytes,
        default: Some("8g"),
        doc: "cap on the bytes one task may output (shuffle segments, text, rows)",
    },
    KeyDef {
        key: "driver.main_deadline",
        kind: Kind::Duration,
        default: Some("24h"),
        doc: "wall-clock budget of the driver program, jobs it waits for included",
    },
    KeyDef {
        key: "driver.max_main_output",
        kind: Kind::Bytes,
        default: Some("1m"),
        doc: "captured stdout/stderr of the driver program",
    },
];

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
}

/// Validated settings, defaults filled in on read.
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

    fn raw(&self, key: &str) -> Option<&str> {
        let def = KEYS
            .iter()
            .find(|d| d.key == key)
            .unwrap_or_else(|| panic!("undeclared setting {key}"));
        self.values.get(key).map(String::as_str).or(def.default)
    }

    /// Whether `key` was given (rather than left at its default).
    /// The value given for `key`, if one was (any key, declared or not: guests ask).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    pub fn bytes(&self, key: &str) -> u64 {
        self.raw(key).and_then(parse_bytes).unwrap_or(0)
    }

    pub fn duration(&self, key: &str) -> Duration {
        self.raw(key).and_then(parse_duration).unwrap_or_default()
    }

    pub fn count(&self, key: &str) -> Option<u32> {
        self.raw(key).and_then(|v| v.parse().ok())
    }

    /// `scheduler.mode` is FAIR.
    pub fn fair(&self) -> bool {
        self.raw("scheduler.mode")
            .is_some_and(|v| v.eq_ignore_ascii_case("fair"))
    }

    pub fn flag(&self, key: &str) -> bool {
        self.raw(key).and_then(parse_bool).unwrap_or(false)
    }

    pub fn number(&self, key: &str) -> f64 {
        self.raw(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
    }

    /// The scheduler's per-job failure policy from these settings.
    pub fn job_policy(&self) -> JobPolicy {
        let ms = |k| self.duration(k).as_millis() as u64;
        JobPolicy {
            max_task_failures: self.count("task.max_failures").unwrap_or(4),
            max_stage_attempts: self.count("stage.max_consecutive_attempts").unwrap_or(4),
            speculation: self.flag("speculation").then(|| Speculation {
                multiplier: self.number("speculation.multiplier"),
                quantile: self.number("speculation.quantile"),
                min_runtime_ms: ms("speculation.min_runtime"),
            }),
            exclusion: self.flag("exclude_on_failure.enabled").then(|| Exclusion {
                max_failed_tasks_per_stage: self
                    .count("exclude_on_failure.stage.max_failed_tasks")
                    .unwrap_or(2),
                max_failed_tasks_per_job: self
                    .count("exclude_on_failure.job.max_failed_tasks")
                    .unwrap_or(4),
            }),
            executor_wait_timeout_ms: ms("scheduler.executor_wait_timeout"),
            pool: Default::default(),
        }
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
        assert_eq!(
            c.duration("executor.heartbeat_interval"),
            Duration::from_millis(500)
        );
        assert_eq!(c.bytes("task.memory"), 64 << 20);
        assert_eq!(c.duration("executor.timeout"), Duration::from_secs(120));
        assert_eq!(c.count("task.max_failures"), Some(4));
        assert_eq!(c.count("shuffle.partitions"), None);
    }

    #[test]
    fn the_job_policy_follows_the_settings() {
        let mut c = Conf::default();
        let p = c.job_policy();
        assert_eq!((p.max_task_failures, p.max_stage_attempts), (4, 4));
        assert!(p.speculation.is_none() && p.exclusion.is_none());
        c.set_pair("speculation=true").unwrap();
        c.set_pair("speculation.quantile=0.5").unwrap();
        c.set_pair("exclude_on_failure.enabled=on").unwrap();
        c.set_pair("stage.max_consecutive_attempts=2").unwrap();
        let p = c.job_policy();
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
        assert_eq!(c.count("task.max_failures"), Some(2));
        assert_eq!(c.count("shuffle.partitions"), Some(8));
        let e = c
            .merge_file("f.conf", "\n\nbogus.key = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.conf:3: unknown setting `bogus.key`"),
            "{e}"
        );
    }
}
