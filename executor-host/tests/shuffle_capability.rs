//! A forged fetch over real QUIC: a member of the cluster (so past mutual TLS) asks an
//! executor for another job's shuffle segment, guessing its ids but not its capability.

use flint_executor_host::shuffle::{Fetcher, ShuffleStore, serve_connection};
use flint_executor_host::tls::{self, ClusterCredentials};
use flint_protocol::ids::{ExecutorId, JobId, ShuffleId};
use flint_protocol::wire::SegmentSource;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_without_the_job_s_capability_is_refused() {
    let creds = ClusterCredentials::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShuffleStore::new(dir.path()));
    let (tenant_a, tenant_b) = (JobId(1), JobId(2));
    let (secret_a, secret_b) = ([0xa5; 16], [0x5b; 16]);
    for (job, secret, data) in [(tenant_a, secret_a, b"aaaa"), (tenant_b, secret_b, b"bbbb")] {
        store.grant(job, secret).unwrap();
        store.write(job, ShuffleId(0), 0, &[data.to_vec()]).unwrap();
    }
    assert!(
        store.grant(tenant_b, secret_a).is_err(),
        "a job id cannot be taken over with another capability"
    );

    let server = tls::endpoint(&creds.member, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicU64::new(0));
    {
        let (server, store, served) = (server.clone(), store.clone(), served.clone());
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                if let Ok(c) = incoming.await {
                    tokio::spawn(serve_connection(c, store.clone(), served.clone()));
                }
            }
        });
    }

    let client = tls::endpoint(&creds.member, "127.0.0.1:0".parse().unwrap()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(
        client,
        ExecutorId(7),
        Arc::new(ShuffleStore::new(other.path())),
    );
    let src = SegmentSource {
        executor: ExecutorId(1),
        addr: addr.clone(),
        map_partition: 0,
        size: 4,
    };
    // Tenant A's task, naming tenant B's job: refused, and nothing is served.
    let err = fetcher
        .fetch(tenant_b, ShuffleId(0), 0, &src, secret_a)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("bbbb"));
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 0);
    // With no capability at all (zeros): refused too.
    assert!(
        fetcher
            .fetch(tenant_b, ShuffleId(0), 0, &src, [0; 16])
            .await
            .is_err()
    );
    // B's own task gets B's data; A's gets A's.
    let (data, remote) = fetcher
        .fetch(tenant_b, ShuffleId(0), 0, &src, secret_b)
        .await
        .unwrap();
    assert_eq!((data.as_slice(), remote), (&b"bbbb"[..], true));
    let (data, _) = fetcher
        .fetch(tenant_a, ShuffleId(0), 0, &src, secret_a)
        .await
        .unwrap();
    assert_eq!(data, b"aaaa");
    // Once the job is cleaned, its capability is gone with its files.
    store.remove_job(tenant_b);
    assert!(
        fetcher
            .fetch(tenant_b, ShuffleId(0), 0, &src, secret_b)
            .await
            .is_err()
    );
}
