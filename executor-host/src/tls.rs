//! Cluster credentials: a per-cluster CA made by the driver, a certificate for the
//! driver and one for members (executors, submitters). Every connection is mutual TLS:
//! a peer without a certificate from this cluster's CA is refused at the handshake.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Server name the driver's certificate carries.
pub const DRIVER_NAME: &str = "flint-driver";
/// Server name every member's certificate carries.
pub const MEMBER_NAME: &str = "flint-member";
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
}

/// A certificate with its key, and the CA that vouches for the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// What the driver makes at start: identities for itself and for members.
pub struct ClusterCredentials {
    pub driver: Identity,
    pub member: Identity,
}

impl ClusterCredentials {
    /// A fresh CA and two leaf certificates signed by it.
    pub fn generate() -> Result<Self, TlsError> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "flint cluster CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf = |name: &str| -> Result<Identity, TlsError> {
            let key = rcgen::KeyPair::generate()?;
            let mut p = rcgen::CertificateParams::new(vec![name.to_string()])?;
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &issuer)?;
            Ok(Identity {
                ca_cert_pem: ca_cert.pem(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        };
        Ok(ClusterCredentials {
            driver: leaf(DRIVER_NAME)?,
            member: leaf(MEMBER_NAME)?,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse(
    id: &Identity,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        rustls::RootCertStore,
    ),
    TlsError,
> {
    let certs = pem_blocks(&id.cert_pem, "CERTIFICATE")?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = pem_blocks(&id.key_pem, "PRIVATE KEY")?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem("no PRIVATE KEY block".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_blocks(&id.ca_cert_pem, "CERTIFICATE")? {
        roots
            .add(CertificateDer::from(ca))
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
    }
    Ok((
        certs,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        roots,
    ))
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

fn base64_decode(s: &str) -> Option<Vec<u8>> {
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

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(Duration::from_secs(30).try_into().expect("30s fits")));
    // Shuffle segments are bulk data: allow a few MB in flight per stream.
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((32u32 << 20).into());
    t.send_window(32 << 20);
    t.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(t)
}

/// Server side: presents `id`, requires a client certificate from the same CA.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    let (certs, key, roots) = parse(id)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
    sc.transport_config(transport());
    Ok(sc)
}

/// Client side: trusts only the cluster CA, presents `id`.
pub fn client_config(id: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    let (certs, key, roots) = parse(id)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    cc.transport_config(transport());
    Ok(cc)
}

/// A QUIC endpoint that serves as `id` and connects out as `id`.
pub fn endpoint(
    id: &Identity,
    bind: std::net::SocketAddr,
) -> Result<quinn::Endpoint, crate::net::NetError> {
    let mut ep =
        quinn::Endpoint::server(server_config(id)?, bind).map_err(crate::net::NetError::Bind)?;
    ep.set_default_client_config(client_config(id)?);
    Ok(ep)
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
    fn generated_credentials_parse() {
        let c = ClusterCredentials::generate().unwrap();
        server_config(&c.driver).unwrap();
        client_config(&c.member).unwrap();
    }
}
