//! Tenants: who may submit, with which quotas, reading and writing where.
//!
//! The driver reads a TOML file (`flint driver --tenants FILE`):
//!
//! ```toml
//! [tenants.alice]
//! token_sha256 = "9f86d0…"          # SHA-256 of the API token, hex; the token itself is never stored
//! weight = 2                        # FAIR share against other tenants
//! min_share = 1                     # slots served first while below it
//! max_slots = 8                     # concurrent tasks
//! max_jobs_running = 4              # concurrent actions; more wait
//! max_task_memory = "1g"            # cap on task.memory
//! max_result_size = "256m"          # cap on driver.max_result_size
//! task_deadline = "10m"             # cap on task.deadline
//! max_apps_running = 2              # driver programs at once (default driver.max_apps_per_tenant)
//! max_partitions_per_stage = 20000  # cap on driver.max_partitions_per_stage
//! max_tasks_per_job = 100000        # cap on driver.max_tasks_per_job
//! max_plan_nodes = 5000             # cap on driver.max_plan_nodes
//! max_accumulator_bytes = "16m"     # cap on driver.max_accumulator_bytes
//! max_broadcast_bytes = "128m"      # cap on driver.max_broadcast_bytes
//! max_main_memory = "512m"          # cap on driver.main_memory
//! max_task_spill_bytes = "20g"      # cap on task.max_spill_bytes
//! max_executor_spill_bytes = "50g"  # what its tasks may hold spilled on one executor at once
//! allowed_paths = ["/data/alice/", "s3://lake/alice/"]  # inputs and outputs lie below one
//! meter_fuel = true                 # count Wasm instructions of its tasks (flint usage)
//! ```
//!
//! A quota caps a setting: an application that leaves the setting at its default gets the
//! quota; one that asks for more is refused, naming both.
//!
//! `flint tenant add NAME --tenants FILE` adds a tenant and prints its token once. Without
//! a tenants file the cluster is open: every application is tenant `default`, unlimited.

use flint_protocol::conf::{Conf, parse_bytes, parse_duration};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TenantError {
    #[error("tenants file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tenants file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("tenants file {path}: tenant `{tenant}`: {message}")]
    Invalid {
        path: PathBuf,
        tenant: String,
        message: String,
    },
    #[error("tenant `{0}` exists already")]
    Exists(String),
    #[error("`{0}` is not a tenant name (letters, digits, `-` and `_`)")]
    BadName(String),
    #[error("this cluster requires a tenant token: submit with --token-file FILE")]
    MissingToken,
    #[error("authentication failed: the token is not valid for this cluster")]
    BadToken,
    #[error(
        "tenant {tenant}: {key} = {value} exceeds the tenant's {limit} ({max}); ask for less or raise the quota"
    )]
    OverQuota {
        tenant: String,
        key: &'static str,
        value: String,
        limit: &'static str,
        max: String,
    },
    #[error(
        "tenant {tenant} may not {verb} {path}: it lies outside the tenant's allowed paths ({allowed})"
    )]
    PathDenied {
        tenant: String,
        verb: &'static str,
        path: String,
        allowed: String,
    },
}

/// One tenant's entry, as in the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    pub token_sha256: String,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_share: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slots: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs_running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_result_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_deadline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_apps_running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_partitions_per_stage: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tasks_per_job: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_plan_nodes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accumulator_bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_broadcast_bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_main_memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_task_spill_bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_executor_spill_bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_paths: Vec<String>,
    /// Count the fuel of this tenant's tasks (for accounting; slows them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub meter_fuel: bool,
}

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TenantsFile {
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantEntry>,
}

/// A quota of the tenants file on one setting.
#[derive(Clone, Debug, PartialEq)]
pub struct Cap {
    /// The setting it caps (`task.memory`).
    pub setting: &'static str,
    /// Its name in the tenants file (`max_task_memory`).
    pub quota: &'static str,
    /// In the setting's unit: bytes, a count, or milliseconds.
    pub max: u64,
}

/// A tenant as the driver uses it: quotas parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub weight: u32,
    pub min_share: u32,
    pub max_slots: Option<u32>,
    pub max_jobs_running: Option<u32>,
    /// Driver programs at once; `None`: `driver.max_apps_per_tenant`.
    pub max_apps_running: Option<u32>,
    /// Quotas on settings.
    pub caps: Vec<Cap>,
    /// Empty: anywhere.
    pub allowed_paths: Vec<PathBuf>,
    pub meter_fuel: bool,
    /// Disk its tasks may hold spilled on one executor at once.
    pub max_executor_spill_bytes: Option<u64>,
}

impl Tenant {
    /// The open cluster's only tenant.
    pub fn default_tenant() -> Tenant {
        Tenant {
            name: "default".into(),
            weight: 1,
            min_share: 0,
            max_slots: None,
            max_jobs_running: None,
            max_apps_running: None,
            caps: Vec::new(),
            allowed_paths: Vec::new(),
            meter_fuel: false,
            max_executor_spill_bytes: None,
        }
    }

    /// Applies the tenant's quotas to an application's settings: a setting left at its
    /// default is lowered to the quota; one set above it is refused.
    pub fn bound(&self, conf: &mut Conf) -> Result<(), TenantError> {
        for cap in &self.caps {
            let Some(value) = conf.magnitude(cap.setting, None) else {
                continue;
            };
            if value <= cap.max {
                continue;
            }
            let is_duration = cap.setting.ends_with("deadline");
            let shown = |v: u64| {
                if is_duration {
                    flint_protocol::scheduler::fmt_ms(v)
                } else {
                    v.to_string()
                }
            };
            if conf.is_set(cap.setting) {
                return Err(TenantError::OverQuota {
                    tenant: self.name.clone(),
                    key: cap.setting,
                    value: shown(value),
                    limit: cap.quota,
                    max: shown(cap.max),
                });
            }
            let v = if is_duration {
                format!("{}ms", cap.max)
            } else {
                cap.max.to_string()
            };
            conf.set(cap.setting, &v).map_err(|e| TenantError::Parse {
                path: PathBuf::new(),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Whether the tenant may `verb` ("read" or "write") `path`.
    pub fn check_path(&self, verb: &'static str, path: &str) -> Result<(), TenantError> {
        if self.allowed_paths.is_empty() {
            return Ok(());
        }
        // An object URL is compared as written; one with `..` or empty segments, which
        // could read as outside its prefix, is never allowed (nor readable).
        let url_ok =
            !flint_storage::object::is_url(path) || flint_storage::object::parse(path).is_ok();
        let resolved = resolve(Path::new(path));
        if url_ok
            && self
                .allowed_paths
                .iter()
                .any(|prefix| resolved.starts_with(prefix))
        {
            return Ok(());
        }
        Err(TenantError::PathDenied {
            tenant: self.name.clone(),
            verb,
            path: path.to_string(),
            allowed: self
                .allowed_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// An absolute path with `.`, `..` and symlinks of its existing part resolved, so that
/// `/data/alice/../bob` or a link out of the prefix cannot pass for inside it.
fn resolve(path: &Path) -> PathBuf {
    if path.to_str().is_some_and(flint_storage::object::is_url) {
        return path.to_path_buf();
    }
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    // Canonicalize the longest existing ancestor, then append the rest lexically.
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => out.push(other.as_os_str()),
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return abs,
        }
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// The tenants a driver knows, or none (an open cluster).
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    by_hash: Vec<(String, Tenant)>,
}

impl Tenants {
    pub fn open() -> Tenants {
        Tenants::default()
    }

    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    pub fn load(path: &Path) -> Result<Tenants, TenantError> {
        let file = read_file(path)?;
        let mut by_hash = Vec::new();
        for (name, e) in file.tenants {
            let invalid = |message: String| TenantError::Invalid {
                path: path.to_path_buf(),
                tenant: name.clone(),
                message,
            };
            if e.token_sha256.len() != 64 || hex::decode(&e.token_sha256).is_err() {
                return Err(invalid(
                    "token_sha256 must be 64 hex digits (the SHA-256 of the token)".into(),
                ));
            }
            let bytes = |key: &str, v: &Option<String>| -> Result<Option<u64>, TenantError> {
                v.as_deref()
                    .map(|s| {
                        parse_bytes(s).ok_or_else(|| {
                            invalid(format!("{key} = {s:?} is not a size like 512m"))
                        })
                    })
                    .transpose()
            };
            let deadline = e
                .task_deadline
                .as_deref()
                .map(|s| {
                    parse_duration(s)
                        .map(|d| d.as_millis() as u64)
                        .ok_or_else(|| {
                            invalid(format!("task_deadline = {s:?} is not a duration like 10m"))
                        })
                })
                .transpose()?;
            let count = |v: Option<u32>| v.map(u64::from);
            let quotas: Vec<(&'static str, &'static str, Option<u64>)> = vec![
                (
                    "task.memory",
                    "max_task_memory",
                    bytes("max_task_memory", &e.max_task_memory)?,
                ),
                (
                    "driver.max_result_size",
                    "max_result_size",
                    bytes("max_result_size", &e.max_result_size)?,
                ),
                ("task.deadline", "task_deadline", deadline),
                (
                    "driver.max_partitions_per_stage",
                    "max_partitions_per_stage",
                    count(e.max_partitions_per_stage),
                ),
                (
                    "driver.max_tasks_per_job",
                    "max_tasks_per_job",
                    count(e.max_tasks_per_job),
                ),
                (
                    "driver.max_plan_nodes",
                    "max_plan_nodes",
                    count(e.max_plan_nodes),
                ),
                (
                    "driver.max_accumulator_bytes",
                    "max_accumulator_bytes",
                    bytes("max_accumulator_bytes", &e.max_accumulator_bytes)?,
                ),
                (
                    "driver.max_broadcast_bytes",
                    "max_broadcast_bytes",
                    bytes("max_broadcast_bytes", &e.max_broadcast_bytes)?,
                ),
                (
                    "driver.main_memory",
                    "max_main_memory",
                    bytes("max_main_memory", &e.max_main_memory)?,
                ),
                (
                    "task.max_spill_bytes",
                    "max_task_spill_bytes",
                    bytes("max_task_spill_bytes", &e.max_task_spill_bytes)?,
                ),
            ];
            let tenant = Tenant {
                name: name.clone(),
                weight: e.weight.max(1),
                min_share: e.min_share,
                max_slots: e.max_slots,
                max_jobs_running: e.max_jobs_running,
                max_apps_running: e.max_apps_running,
                max_executor_spill_bytes: bytes(
                    "max_executor_spill_bytes",
                    &e.max_executor_spill_bytes,
                )?,
                caps: quotas
                    .into_iter()
                    .filter_map(|(setting, quota, max)| {
                        Some(Cap {
                            setting,
                            quota,
                            max: max?,
                        })
                    })
                    .collect(),
                allowed_paths: e
                    .allowed_paths
                    .iter()
                    .map(|p| resolve(Path::new(p)))
                    .collect(),
                meter_fuel: e.meter_fuel,
            };
            by_hash.push((e.token_sha256.to_ascii_lowercase(), tenant));
        }
        Ok(Tenants { by_hash })
    }

    /// Who `token` belongs to. An open cluster takes anyone as `default`.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Tenant, TenantError> {
        if self.is_open() {
            return Ok(Tenant::default_tenant());
        }
        let token = token.ok_or(TenantError::MissingToken)?;
        let digest = hash_token(token);
        let mut found = None;
        for (hash, tenant) in &self.by_hash {
            if flint_protocol::constant_time_eq(hash.as_bytes(), digest.as_bytes()) {
                found = Some(tenant.clone());
            }
        }
        found.ok_or(TenantError::BadToken)
    }

    pub fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.by_hash.iter().map(|(_, t)| t)
    }
}

fn read_file(path: &Path) -> Result<TenantsFile, TenantError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(TenantError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    toml::from_str(&text).map_err(|e| TenantError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Adds tenant `name` to the file (created if missing) and returns its new token, which
/// is stored only as a hash.
pub fn add_tenant(
    path: &Path,
    name: &str,
    allowed_paths: Vec<String>,
) -> Result<String, TenantError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(TenantError::BadName(name.to_string()));
    }
    let mut file = read_file(path)?;
    if file.tenants.contains_key(name) {
        return Err(TenantError::Exists(name.to_string()));
    }
    let token: [u8; 32] = rand::random();
    let token = hex::encode(token);
    file.tenants.insert(
        name.to_string(),
        TenantEntry {
            token_sha256: hash_token(&token),
            weight: 1,
            allowed_paths,
            ..Default::default()
        },
    );
    let text = toml::to_string(&file).map_err(|e| TenantError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let io = |source| TenantError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_their_tenant_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tenants.toml");
        let a = add_tenant(&f, "alice", vec![]).unwrap();
        let b = add_tenant(&f, "bob", vec![]).unwrap();
        assert!(matches!(
            add_tenant(&f, "alice", vec![]),
            Err(TenantError::Exists(_))
        ));
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains(&a) && !text.contains(&b),
            "tokens are not stored"
        );
        let t = Tenants::load(&f).unwrap();
        assert_eq!(t.authenticate(Some(&a)).unwrap().name, "alice");
        assert_eq!(t.authenticate(Some(&format!("{b}\n"))).unwrap().name, "bob");
        assert!(matches!(
            t.authenticate(Some("guess")),
            Err(TenantError::BadToken)
        ));
        assert!(matches!(
            t.authenticate(None),
            Err(TenantError::MissingToken)
        ));
        assert_eq!(Tenants::open().authenticate(None).unwrap().name, "default");
    }

    #[test]
    fn paths_outside_the_prefixes_are_refused_even_through_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("alice");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(dir.path().join("bob")).unwrap();
        let t = Tenant {
            allowed_paths: vec![resolve(&mine)],
            ..Tenant::default_tenant()
        };
        assert!(
            t.check_path("read", mine.join("in.txt").to_str().unwrap())
                .is_ok()
        );
        assert!(
            t.check_path("write", mine.join("new/out").to_str().unwrap())
                .is_ok()
        );
        let e = t
            .check_path("read", mine.join("../bob/x").to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("may not read") && e.contains("allowed paths"),
            "{e}"
        );
        assert!(t.check_path("read", "/etc/passwd").is_err());
    }

    #[test]
    fn bucket_prefixes_are_allowed_paths_too() {
        let t = Tenant {
            allowed_paths: vec![resolve(Path::new("s3://lake/alice/"))],
            ..Tenant::default_tenant()
        };
        assert!(
            t.check_path("read", "s3://lake/alice/flights/a.csv")
                .is_ok()
        );
        assert!(t.check_path("write", "s3://lake/alice").is_ok());
        for denied in [
            "s3://lake/alice2/x",
            "s3://lake/bob/x",
            "s3://lake/alice/../bob/x",
            "s3://lake/alice//x",
            "s3://other/alice/x",
            "/lake/alice/x",
        ] {
            assert!(t.check_path("read", denied).is_err(), "{denied}");
        }
    }

    #[test]
    fn quotas_cap_defaults_and_refuse_explicit_excess() {
        let t = Tenant {
            name: "alice".into(),
            caps: vec![
                Cap {
                    setting: "task.memory",
                    quota: "max_task_memory",
                    max: 64 << 20,
                },
                Cap {
                    setting: "driver.max_partitions_per_stage",
                    quota: "max_partitions_per_stage",
                    max: 100,
                },
            ],
            ..Tenant::default_tenant()
        };
        let mut c = Conf::default();
        t.bound(&mut c).unwrap();
        assert_eq!(c.settings().task_memory, 64 << 20, "the default is lowered");
        assert_eq!(c.settings().max_partitions_per_stage, 100);
        let mut c = Conf::default();
        c.set("task.memory", "1g").unwrap();
        let e = t.bound(&mut c).unwrap_err().to_string();
        assert!(
            e.contains("task.memory") && e.contains("max_task_memory"),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_file_names_the_tenant_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "[tenants.x]\ntoken_sha256 = \"abc\"\n").unwrap();
        let e = Tenants::load(&f).unwrap_err().to_string();
        assert!(
            e.contains("tenant `x`") && e.contains("64 hex digits"),
            "{e}"
        );
        std::fs::write(&f, "[tenants.x]\ntokn = 1\n").unwrap();
        assert!(
            Tenants::load(&f)
                .unwrap_err()
                .to_string()
                .contains("t.toml")
        );
    }
}
