//! Framed messages over QUIC streams, and the raw bulk transfers that follow a header.

use flint_protocol::wire::{self, FrameError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetError {
    #[error("binding the QUIC endpoint: {0}")]
    Bind(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream ended in the middle of a message")]
    Truncated,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer refused: {0}")]
    Refused(String),
}

pub async fn write_frame<T: Serialize>(s: &mut quinn::SendStream, msg: &T) -> Result<(), NetError> {
    s.write_all(&wire::encode_frame(msg)).await?;
    Ok(())
}

/// Next message, or `None` when the peer finished the stream between messages.
pub async fn read_frame<T: DeserializeOwned>(
    r: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<T>, NetError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(NetError::Truncated),
        Err(e) => return Err(e.into()),
    }
    let len = wire::frame_len(prefix, max)?;
    let body = read_exact_vec(r, len).await?;
    Ok(Some(wire::decode_body(&body)?))
}

/// A message that must be there.
pub async fn expect_frame<T: DeserializeOwned>(
    r: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, NetError> {
    read_frame(r, max).await?.ok_or(NetError::Truncated)
}

/// Exactly `len` bytes (a caller has already bounded `len`).
pub async fn read_exact_vec(r: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, NetError> {
    let mut body = vec![0u8; len];
    match r.read_exact(&mut body).await {
        Ok(()) => Ok(body),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(NetError::Truncated),
        Err(e) => Err(e.into()),
    }
}

pub async fn connect(
    ep: &quinn::Endpoint,
    addr: &str,
    server_name: &str,
) -> Result<quinn::Connection, NetError> {
    let sock: std::net::SocketAddr =
        addr.parse()
            .map_err(|e: std::net::AddrParseError| NetError::Connect {
                addr: addr.to_string(),
                source: Box::new(e),
            })?;
    let connecting = ep
        .connect(sock, server_name)
        .map_err(|e| NetError::Connect {
            addr: addr.to_string(),
            source: Box::new(e),
        })?;
    connecting.await.map_err(|e| NetError::Connect {
        addr: addr.to_string(),
        source: Box::new(e),
    })
}

/// Sends a fetch reply header and the bytes after it, then finishes the stream.
pub async fn send_blob(
    s: &mut quinn::SendStream,
    reply: Result<&[u8], String>,
) -> Result<(), NetError> {
    match reply {
        Ok(bytes) => {
            write_frame(s, &Ok::<u64, String>(bytes.len() as u64)).await?;
            s.write_all(bytes).await?;
        }
        Err(e) => write_frame(s, &Err::<u64, String>(e)).await?,
    }
    let _ = s.finish();
    Ok(())
}

/// Reads a fetch reply header and up to `max` bytes after it.
pub async fn recv_blob(r: &mut quinn::RecvStream, max: u64) -> Result<Vec<u8>, NetError> {
    let reply: wire::FetchReply = expect_frame(r, 1 << 16).await?;
    let len = reply.map_err(NetError::Refused)?;
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as usize,
            max: max as usize,
        }
        .into());
    }
    read_exact_vec(r, len as usize).await
}
