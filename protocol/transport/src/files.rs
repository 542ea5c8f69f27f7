//! The files a driver writes in its state directory for the others to join with:
//! - `cluster.json`, for executors only: the driver's address, the driver CA and the
//!   enrolment token that gets an executor its certificate. The operator keeps it.
//! - `client.json`, for tenants: the driver's address, the driver CA to verify it, and
//!   where its web UI is. Nothing in it lets its holder act as an executor.

use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is malformed: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "{path} is a tenant's client file: it lets its holder submit jobs, not join as an executor; executors join with the cluster file the operator keeps (STATE_DIR/cluster.json)"
    )]
    ClientFileForExecutor { path: String },
    #[error(
        "{path} was written by a driver speaking protocol version {found}, this flint speaks {ours}; use matching flint builds"
    )]
    Version { path: String, found: u32, ours: u32 },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Which of the two files a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Cluster,
    Client,
}

/// `STATE_DIR/cluster.json`: what lets a host join as an executor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub file: FileKind,
    pub driver: String,
    pub protocol_version: u32,
    /// Verifies the driver.
    pub driver_ca_pem: String,
    /// Proves to the driver that the host may enrol as an executor.
    pub enrolment_token: String,
}

/// `STATE_DIR/client.json`: what a tenant is given.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientFile {
    pub file: FileKind,
    pub driver: String,
    pub protocol_version: u32,
    /// Verifies the driver.
    pub driver_ca_pem: String,
    /// The driver's web UI and JSON API, when it serves one.
    #[serde(default)]
    pub ui: Option<String>,
}

/// Just enough to tell the files apart.
#[derive(Deserialize)]
struct Probe {
    file: Option<FileKind>,
    protocol_version: Option<u32>,
}

fn read(path: &Path) -> Result<(String, Probe), FileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: p.clone(),
        source,
    })?;
    let probe: Probe = serde_json::from_str(&text).map_err(|source| FileError::Parse {
        path: p.clone(),
        source,
    })?;
    if let Some(found) = probe.protocol_version
        && found != flint_protocol::PROTOCOL_VERSION
    {
        return Err(FileError::Version {
            path: p,
            found,
            ours: flint_protocol::PROTOCOL_VERSION,
        });
    }
    Ok((text, probe))
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    serde_json::from_str(text).map_err(|source| FileError::Parse {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, json: String, private: bool) -> Result<(), FileError> {
    let err = |source| FileError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, if private { 0o600 } else { 0o644 });
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(json.as_bytes()).map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

impl ClusterFile {
    /// Loads an executor's file; a tenant's client file is refused, saying what it is.
    pub fn load(path: &Path) -> Result<ClusterFile, FileError> {
        let (text, probe) = read(path)?;
        if probe.file == Some(FileKind::Client) {
            return Err(FileError::ClientFileForExecutor {
                path: path.display().to_string(),
            });
        }
        parse(path, &text)
    }

    /// Written readable by the owner only: the enrolment token is a secret.
    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        write(
            path,
            serde_json::to_string_pretty(self).expect("plain data"),
            true,
        )
    }
}

impl ClientFile {
    /// Loads a tenant's file. The operator's cluster file serves too: it knows the driver
    /// and its CA (its enrolment token is not used for submitting).
    pub fn load(path: &Path) -> Result<ClientFile, FileError> {
        let (text, probe) = read(path)?;
        if probe.file == Some(FileKind::Cluster) {
            let c: ClusterFile = parse(path, &text)?;
            return Ok(ClientFile {
                file: FileKind::Client,
                driver: c.driver,
                protocol_version: c.protocol_version,
                driver_ca_pem: c.driver_ca_pem,
                ui: None,
            });
        }
        parse(path, &text)
    }

    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        write(
            path,
            serde_json::to_string_pretty(self).expect("plain data"),
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executor_refuses_a_client_file_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("client.json");
        ClientFile {
            file: FileKind::Client,
            driver: "127.0.0.1:1".into(),
            protocol_version: flint_protocol::PROTOCOL_VERSION,
            driver_ca_pem: "x".into(),
            ui: None,
        }
        .save(&client)
        .unwrap();
        let e = ClusterFile::load(&client).unwrap_err().to_string();
        assert!(e.contains("tenant's client file"), "{e}");
        assert!(ClientFile::load(&client).is_ok());

        let cluster = dir.path().join("cluster.json");
        ClusterFile {
            file: FileKind::Cluster,
            driver: "127.0.0.1:1".into(),
            protocol_version: flint_protocol::PROTOCOL_VERSION + 1,
            driver_ca_pem: "x".into(),
            enrolment_token: "t".into(),
        }
        .save(&cluster)
        .unwrap();
        let e = ClusterFile::load(&cluster).unwrap_err().to_string();
        assert!(e.contains("protocol version"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&cluster).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "cluster.json is private");
        }
    }
}
