//! Who is who on a Flint cluster, by TLS identity. The driver makes two certificate
//! authorities when it starts and keeps their keys:
//! - the **driver CA** vouches for the driver's certificate only. Everyone who talks to
//!   the driver (executors, tenants) trusts it: `cluster.json` and `client.json` carry it.
//! - the **executors' CA** signs each executor's own key at enrolment. The driver accepts
//!   a client certificate only from it, so a connection that presents one *is* an
//!   executor; executors accept peer connections (shuffle, cache fetches) only with one.
//!
//! A tenant holds neither key nor certificate: its connections to the driver carry none,
//! and the driver lets such a connection submit (with a tenant token) or enrol (with the
//! operator's enrolment token), never speak as an executor.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Server name the driver's certificate carries.
pub const DRIVER_NAME: &str = "flint-driver";
/// Server name every executor's certificate carries.
pub const EXECUTOR_NAME: &str = "flint-executor";
const ALPN: &[u8] = b"flint/1";

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("bad certificate or key: {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS configuration: {0}")]
    Verifier(String),
    #[error(
        "an executor's public key must be an uncompressed P-256 point (65 bytes), got {0} bytes"
    )]
    BadPublicKey(usize),
}

/// One certificate authority: its certificate, and the key that signs with it.
struct Ca {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn generate(name: &str) -> Result<Ca, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A certificate for `name`, usable to serve and to connect, for `key`.
    fn issue(&self, name: &str, key: &impl rcgen::PublicKeyData) -> Result<String, TlsError> {
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()])?;
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok(p.signed_by(key, &self.issuer)?.pem())
    }
}

/// The driver's authorities (see the module docs). Made at start, kept in memory only.
pub struct ClusterAuthority {
    driver: Ca,
    executors: Ca,
}

/// An executor's public key as it sent it: a raw P-256 point.
struct RawP256<'a>(&'a [u8]);

impl rcgen::PublicKeyData for RawP256<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl ClusterAuthority {
    pub fn generate() -> Result<ClusterAuthority, TlsError> {
        Ok(ClusterAuthority {
            driver: Ca::generate("flint driver CA")?,
            executors: Ca::generate("flint executors CA")?,
        })
    }

    /// What everyone who talks to the driver trusts.
    pub fn driver_ca_pem(&self) -> &str {
        &self.driver.cert_pem
    }

    pub fn executor_ca_pem(&self) -> &str {
        &self.executors.cert_pem
    }

    /// A fresh key and certificate for the driver itself.
    pub fn driver_identity(&self) -> Result<DriverIdentity, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        Ok(DriverIdentity {
            cert_pem: self.driver.issue(DRIVER_NAME, &key)?,
            key_pem: key.serialize_pem(),
            executor_ca_pem: self.executors.cert_pem.clone(),
        })
    }

    /// An executor certificate for `public_key` (an enrolled executor's own key).
    pub fn issue_executor(&self, public_key: &[u8]) -> Result<String, TlsError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(TlsError::BadPublicKey(public_key.len()));
        }
        self.executors.issue(EXECUTOR_NAME, &RawP256(public_key))
    }
}

/// The driver's key and certificate, and the CA its executors' certificates come from.
#[derive(Clone)]
pub struct DriverIdentity {
    cert_pem: String,
    key_pem: String,
    executor_ca_pem: String,
}

/// An executor's key, made on its own host; only its public half ever leaves.
pub struct ExecutorKey {
    key: rcgen::KeyPair,
}

impl ExecutorKey {
    pub fn generate() -> Result<ExecutorKey, TlsError> {
        Ok(ExecutorKey {
            key: rcgen::KeyPair::generate()?,
        })
    }

    /// The raw public key, for enrolment.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key_raw().to_vec()
    }

    /// The identity once the driver issued `cert_pem` for this key.
    pub fn into_identity(
        self,
        cert_pem: String,
        executor_ca_pem: String,
        driver_ca_pem: String,
    ) -> ExecutorIdentity {
        ExecutorIdentity {
            cert_pem,
            key_pem: self.key.serialize_pem(),
            executor_ca_pem,
            driver_ca_pem,
        }
    }
}

/// An enrolled executor's key and certificate, with the CAs it checks its peers and the
/// driver against.
#[derive(Clone, Serialize, Deserialize)]
pub struct ExecutorIdentity {
    cert_pem: String,
    key_pem: String,
    executor_ca_pem: String,
    driver_ca_pem: String,
}

impl std::fmt::Debug for ExecutorIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExecutorIdentity { .. }")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(pem_blocks(pem, "CERTIFICATE")?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = pem_blocks(pem, "PRIVATE KEY")?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem("no PRIVATE KEY block".into()))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs(ca_pem)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Minimal PEM reader for the blocks rcgen writes.
fn pem_blocks(text: &str, label: &str) -> Result<Vec<Vec<u8>>, TlsError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(b) = rest.find(&begin) {
        let after = &rest[b + begin.len()..];
        let e = after
            .find(&end)
            .ok_or_else(|| TlsError::Pem(format!("unterminated {label} block")))?;
        let b64: String = after[..e].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(
            base64_decode(&b64)
                .ok_or_else(|| TlsError::Pem(format!("bad base64 in {label} block")))?,
        );
        rest = &after[e + end.len()..];
    }
    if out.is_empty() {
        return Err(TlsError::Pem(format!("no {label} block")));
    }
    Ok(out)
}

/// Standard base64 (padding optional), as PEM blocks and HTTP basic auth carry it.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c)? << (18 - 6 * i);
        }
        let take = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

/// Streams and receive window of a known peer.
const STREAMS: u32 = 1024;
const WINDOW: u32 = 32 << 20;

/// Keep-alives and idle timeout as every connection has them, with these windows.
fn transport_with(stream_window: u32, window: u32, streams: u32) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30s fits")));
    t.stream_receive_window(stream_window.into());
    t.receive_window(window.into());
    t.send_window(WINDOW as u64);
    t.max_concurrent_bidi_streams(streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// Between executors, and from the driver: shuffle segments are bulk data, so a few MB
/// in flight per stream.
fn transport() -> Arc<quinn::TransportConfig> {
    transport_with(8 << 20, WINDOW, STREAMS)
}

fn quic_server(cfg: rustls::ServerConfig) -> Result<quinn::ServerConfig, TlsError> {
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(transport());
    Ok(sc)
}

fn quic_client(mut cfg: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(transport());
    Ok(cc)
}

fn server_builder()
-> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, TlsError> {
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?)
}

fn client_builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?)
}

/// What the driver offers every peer before it knows it: a few streams and small
/// windows, so an anonymous peer cannot make it buffer much. A peer it admits gets more
/// (see [`open_up`]).
fn driver_transport() -> Arc<quinn::TransportConfig> {
    transport_with(2 << 20, 4 << 20, 4)
}

/// Gives an admitted peer (an executor, or a submitter being read) the room the others
/// get from the start: many streams (module and result fetches), a larger window.
pub fn open_up(conn: &quinn::Connection) {
    conn.set_max_concurrent_bi_streams(STREAMS.into());
    conn.set_receive_window(WINDOW.into());
}

/// The driver's side: presents the driver's certificate; a client may present an
/// executor certificate (then it is an executor) or none (a tenant, or a host enrolling).
fn driver_server_config(id: &DriverIdentity) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&id.executor_ca_pem)?,
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = server_builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&id.cert_pem)?, key(&id.key_pem)?)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let mut sc = quic_server(cfg)?;
    sc.transport_config(driver_transport());
    Ok(sc)
}

/// The driver's QUIC endpoint.
pub fn driver_endpoint(
    id: &DriverIdentity,
    bind: std::net::SocketAddr,
) -> Result<quinn::Endpoint, crate::net::NetError> {
    quinn::Endpoint::server(driver_server_config(id)?, bind).map_err(crate::net::NetError::Bind)
}

/// Connecting without a certificate, trusting only the driver CA `driver_ca_pem`: how a
/// tenant submits and a host enrols.
pub fn anonymous_client_config(driver_ca_pem: &str) -> Result<quinn::ClientConfig, TlsError> {
    quic_client(
        client_builder()?
            .with_root_certificates(roots(driver_ca_pem)?)
            .with_no_client_auth(),
    )
}

/// An endpoint that only connects out, without a certificate (tenants, enrolment).
pub fn anonymous_endpoint(driver_ca_pem: &str) -> Result<quinn::Endpoint, crate::net::NetError> {
    let bind: std::net::SocketAddr = "0.0.0.0:0".parse().expect("a valid address");
    let mut ep = quinn::Endpoint::client(bind).map_err(crate::net::NetError::Bind)?;
    ep.set_default_client_config(anonymous_client_config(driver_ca_pem)?);
    Ok(ep)
}

impl ExecutorIdentity {
    /// How this executor connects to the driver: presenting its certificate, trusting
    /// the driver CA.
    pub fn driver_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        quic_client(
            client_builder()?
                .with_root_certificates(roots(&self.driver_ca_pem)?)
                .with_client_auth_cert(certs(&self.cert_pem)?, key(&self.key_pem)?)?,
        )
    }

    /// How this executor connects to its peers: both sides executors of this cluster.
    fn peer_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        quic_client(
            client_builder()?
                .with_root_certificates(roots(&self.executor_ca_pem)?)
                .with_client_auth_cert(certs(&self.cert_pem)?, key(&self.key_pem)?)?,
        )
    }

    /// Serving peers: an executor certificate is required of every client, so neither a
    /// tenant nor anyone outside the cluster can fetch shuffle or cached data.
    fn peer_server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots(&self.executor_ca_pem)?,
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut cfg = server_builder()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert_pem)?, key(&self.key_pem)?)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        quic_server(cfg)
    }

    /// The executor's endpoint: serves its peers, connects to peers by default (and to
    /// the driver with [`driver_client_config`](Self::driver_client_config)).
    pub fn endpoint(
        &self,
        bind: std::net::SocketAddr,
    ) -> Result<quinn::Endpoint, crate::net::NetError> {
        let mut ep = quinn::Endpoint::server(self.peer_server_config()?, bind)
            .map_err(crate::net::NetError::Bind)?;
        ep.set_default_client_config(self.peer_client_config()?);
        Ok(ep)
    }
}

/// Whether the peer of `conn` presented a certificate. On the driver's endpoint only the
/// executors' CA can have issued it (the handshake checked), so it is an executor.
pub fn has_client_certificate(conn: &quinn::Connection) -> bool {
    conn.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|certs| !certs.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip_of_known_vectors() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert!(base64_decode("a").is_none());
    }

    #[test]
    fn generated_identities_make_configs() {
        let ca = ClusterAuthority::generate().unwrap();
        driver_server_config(&ca.driver_identity().unwrap()).unwrap();
        anonymous_client_config(ca.driver_ca_pem()).unwrap();
        let key = ExecutorKey::generate().unwrap();
        let cert = ca.issue_executor(&key.public_key()).unwrap();
        let id = key.into_identity(
            cert,
            ca.executor_ca_pem().to_string(),
            ca.driver_ca_pem().to_string(),
        );
        id.driver_client_config().unwrap();
        id.peer_server_config().unwrap();
        assert!(matches!(
            ca.issue_executor(b"short"),
            Err(TlsError::BadPublicKey(5))
        ));
    }
}
