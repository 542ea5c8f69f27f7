//! Submitting an application to a driver, and the cluster file members join with.

use flint_executor_host::net::{self, NetError};
use flint_executor_host::tls::{self, Identity};
use flint_protocol::wire::{self, AppSummary, Hello, SubmitEvent, SubmitRequest};
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// `DIR/cluster.json`: what a member needs to join (address and credentials).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub driver: String,
    pub protocol_version: u32,
    pub member: Identity,
    /// The driver's web UI and JSON API, when it serves one.
    #[serde(default)]
    pub ui: Option<String>,
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("reading cluster file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster file {path} is malformed: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the driver closed the submission without a result")]
    NoResult,
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<ClusterFile, ClientError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
            path: p.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ClientError::Parse { path: p, source })
    }

    /// Written readable by the owner only: it holds a private key.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(
                serde_json::to_string_pretty(self)
                    .map_err(std::io::Error::other)?
                    .as_bytes(),
            )?;
        }
        std::fs::rename(tmp, path)
    }
}

/// Submits and waits; `on_event` sees progress. `Err(chain)` when the application failed.
pub async fn submit(
    member: &Identity,
    driver: &str,
    req: SubmitRequest,
    mut on_event: impl FnMut(&SubmitEvent),
) -> Result<Result<AppSummary, Vec<String>>, ClientError> {
    let endpoint =
        quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid")).map_err(NetError::Bind)?;
    let mut endpoint = endpoint;
    endpoint.set_default_client_config(tls::client_config(member).map_err(NetError::from)?);
    let conn = net::connect(&endpoint, driver, tls::DRIVER_NAME).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
    net::write_frame(&mut send, &Hello::Submit(req)).await?;
    let _ = send.finish();
    let result = loop {
        match net::read_frame::<SubmitEvent>(&mut recv, wire::MAX_FRAME).await? {
            Some(SubmitEvent::Finished(r)) => break r,
            Some(ev) => on_event(&ev),
            None => return Err(ClientError::NoResult),
        }
    };
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(result)
}
