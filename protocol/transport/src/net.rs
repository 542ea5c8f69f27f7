//! Framed messages over QUIC streams, the preamble that opens every connection, and the
//! raw bulk transfers that follow a header.

use flint_protocol::wire::preamble::{self, PreambleError};
use flint_protocol::wire::{self, FrameError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
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
    #[error(transparent)]
    Preamble(#[from] PreambleError),
    #[error("the peer sent nothing within {0:?}")]
    Silent(Duration),
    #[error("peer refused: {0}")]
    Refused(String),
}

/// How long a peer may take to open its first stream and send its preamble and hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `msg` framed; one over [`wire::MAX_FRAME`] is refused, nothing sent.
pub async fn write_frame<T: Serialize>(s: &mut quinn::SendStream, msg: &T) -> Result<(), NetError> {
    s.write_all(&wire::encode_frame(msg, wire::MAX_FRAME)?)
        .await?;
    Ok(())
}

/// Several messages in one write: a writer that drains its queue sends what piled up
/// (statuses, launches) together instead of waking the connection once per message.
pub async fn write_frames<T: Serialize>(
    s: &mut quinn::SendStream,
    msgs: &[T],
) -> Result<(), NetError> {
    let mut buf = Vec::new();
    for m in msgs {
        buf.extend_from_slice(&wire::encode_frame(m, wire::MAX_FRAME)?);
    }
    s.write_all(&buf).await?;
    Ok(())
}

/// Next message, or `None` when the peer finished the stream between messages. A length
/// over `max` is refused before anything is allocated for the body.
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

async fn read_preamble(r: &mut quinn::RecvStream) -> Result<(), NetError> {
    let mut p = [0u8; preamble::LEN];
    match r.read_exact(&mut p).await {
        Ok(()) => Ok(preamble::check(&p)?),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(NetError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// The client's opening: a first stream, our preamble, the peer's checked. What follows
/// on the stream is the conversation.
pub async fn open(
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&preamble::ours()).await?;
    match tokio::time::timeout(HELLO_TIMEOUT, read_preamble(&mut recv)).await {
        Ok(r) => r?,
        Err(_) => return Err(NetError::Silent(HELLO_TIMEOUT)),
    }
    Ok((send, recv))
}

/// The server's side of [`open`]: the peer's first stream and preamble, within
/// [`HELLO_TIMEOUT`]. Our preamble goes back whatever the peer's said, so a peer of
/// another version learns ours; a mismatch then closes the connection.
pub async fn accept(
    conn: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
    let opened = async {
        let (mut send, mut recv) = conn.accept_bi().await?;
        let theirs = read_preamble(&mut recv).await;
        send.write_all(&preamble::ours()).await?;
        if let Err(e) = theirs {
            let _ = send.finish();
            return Err(e);
        }
        Ok((send, recv))
    };
    match tokio::time::timeout(HELLO_TIMEOUT, opened).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Silent(HELLO_TIMEOUT)),
    }
}

/// The first message after the preamble, small and prompt: before a peer is known, at
/// most [`wire::MAX_HELLO`] bytes within [`HELLO_TIMEOUT`].
pub async fn read_hello<T: DeserializeOwned>(r: &mut quinn::RecvStream) -> Result<T, NetError> {
    match tokio::time::timeout(HELLO_TIMEOUT, expect_frame(r, wire::MAX_HELLO)).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Silent(HELLO_TIMEOUT)),
    }
}

fn parse_addr(addr: &str) -> Result<std::net::SocketAddr, NetError> {
    addr.parse()
        .map_err(|e: std::net::AddrParseError| NetError::Connect {
            addr: addr.to_string(),
            source: Box::new(e),
        })
}

/// Connects with the endpoint's default client configuration.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: &str,
    server_name: &str,
) -> Result<quinn::Connection, NetError> {
    let sock = parse_addr(addr)?;
    finish_connect(ep.connect(sock, server_name), addr).await
}

/// Connects with `config` instead of the endpoint's default.
pub async fn connect_with(
    ep: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    server_name: &str,
) -> Result<quinn::Connection, NetError> {
    let sock = parse_addr(addr)?;
    finish_connect(ep.connect_with(config, sock, server_name), addr).await
}

async fn finish_connect(
    connecting: Result<quinn::Connecting, quinn::ConnectError>,
    addr: &str,
) -> Result<quinn::Connection, NetError> {
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| NetError::Connect {
        addr: addr.to_string(),
        source,
    };
    connecting
        .map_err(|e| fail(Box::new(e)))?
        .await
        .map_err(|e| fail(Box::new(e)))
}

/// Sends a fetch reply header and the bytes after it, then finishes the stream.
pub async fn send_blob(
    s: &mut quinn::SendStream,
    reply: Result<&[u8], String>,
) -> Result<(), NetError> {
    write_blob(s, reply).await?;
    let _ = s.finish();
    Ok(())
}

/// Sends a fetch reply header and the bytes after it (one of several on the stream).
pub async fn write_blob(
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
