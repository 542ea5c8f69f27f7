//! A tenant's way into a cluster: submit an application with the driver's `client.json`
//! and a tenant token, follow its progress, get its summary or its typed error.
//!
//! Neighbours: speaks `flint-protocol` messages through `flint-transport`, and needs
//! nothing else; it runs no guest code, so it does not link the sandbox.
//!
//! The one decision to know: the submission is authenticated before the component is
//! sent. The first message is small (the component's hash and size); the driver answers
//! `Accepted` (or refuses, typed) before it reads the component's bytes, and does not ask
//! for them when it still holds them from this tenant's earlier submission.

use flint_protocol::ids::ModuleHash;
use flint_protocol::wire::{self, AppError, AppSummary, Hello, SubmitEvent, SubmitHello};
use flint_transport::net::{self, NetError};
use flint_transport::{ClientFile, tls};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("the driver closed the submission without a result")]
    NoResult,
    #[error("the driver answered {0} before accepting the submission")]
    Unexpected(&'static str),
}

/// What to run.
pub struct Submission {
    /// Shown in logs and summaries.
    pub name: String,
    pub component: Vec<u8>,
    pub args: Vec<String>,
    /// `KEY=VALUE` settings, validated by the caller.
    pub conf: Vec<(String, String)>,
    /// The tenant's API token, where the cluster has tenants.
    pub token: Option<String>,
}

/// Submits and waits; `on_event` sees progress. The inner `Err` is the application's
/// failure, typed by what went wrong; the outer one, not reaching the driver.
pub async fn submit(
    file: &ClientFile,
    submission: Submission,
    mut on_event: impl FnMut(&SubmitEvent),
) -> Result<Result<AppSummary, AppError>, ClientError> {
    let endpoint = tls::anonymous_endpoint(&file.driver_ca_pem)?;
    let conn = net::connect(&endpoint, &file.driver, tls::DRIVER_NAME).await?;
    let (mut send, mut recv) = net::open(&conn).await?;
    let hello = SubmitHello {
        name: submission.name,
        args: submission.args,
        conf: submission.conf,
        token: submission.token,
        component_bytes: submission.component.len() as u64,
        component: ModuleHash(Sha256::digest(&submission.component).into()),
    };
    net::write_frame(&mut send, &Hello::Submit(hello)).await?;
    match net::read_frame::<SubmitEvent>(&mut recv, wire::MAX_FRAME).await? {
        Some(ev @ SubmitEvent::Accepted { upload, .. }) => {
            on_event(&ev);
            if upload {
                send.write_all(&submission.component)
                    .await
                    .map_err(NetError::from)?;
            }
        }
        Some(SubmitEvent::Finished(r)) => {
            close(conn, endpoint).await;
            return Ok(r);
        }
        Some(_) => return Err(ClientError::Unexpected("a job event")),
        None => return Err(ClientError::NoResult),
    }
    let _ = send.finish();
    let result = loop {
        match net::read_frame::<SubmitEvent>(&mut recv, wire::MAX_FRAME).await? {
            Some(SubmitEvent::Finished(r)) => break r,
            Some(ev) => on_event(&ev),
            None => return Err(ClientError::NoResult),
        }
    };
    close(conn, endpoint).await;
    Ok(result)
}

/// Closes the connection and returns at once: the result is in hand. QUIC keeps a closed
/// connection about three probe timeouts (some 80 ms on loopback) to answer a peer that
/// missed the close; the endpoint does that in the background, not in the caller's time.
async fn close(conn: quinn::Connection, endpoint: quinn::Endpoint) {
    conn.close(0u32.into(), b"done");
    tokio::spawn(async move { endpoint.wait_idle().await });
}
