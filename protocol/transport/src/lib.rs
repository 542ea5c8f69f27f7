//! The IO half of Flint's protocol: who a peer is (TLS identities per role), how every
//! connection opens (the preamble), framed messages over QUIC streams, and the files a
//! driver writes for executors and tenants to join with.
//!
//! Neighbours: `flint-protocol` holds the messages themselves and no IO; the driver, the
//! executors and the submit client (`flint-client`) all speak through this crate, and
//! none of them reaches into another's.
//!
//! The one decision to know: a role is a TLS identity, not a claim in a message. The
//! driver accepts executor messages only on connections that present a certificate of
//! the executors' CA (see [`tls`]); tenants have no certificate at all.

pub mod files;
pub mod net;
pub mod tls;

pub use files::{ClientFile, ClusterFile, FileError, FileKind};
pub use net::NetError;
