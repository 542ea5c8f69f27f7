//! Shuffle serving over real QUIC: only executors of the cluster get past the handshake,
//! and an executor of the cluster (say, one running a hostile tenant's task) that asks for
//! another job's segment, guessing its ids but not its capability, is refused.

use flint_executor_host::shuffle::{
    Fetcher, SEGMENT_CHUNK, ShuffleStore, serve_connection, whole_frames,
};
use flint_protocol::ids::{ExecutorId, JobId, ShuffleId};
use flint_protocol::wire::SegmentSource;
use flint_transport::tls::{ClusterAuthority, ExecutorIdentity, ExecutorKey};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// An executor identity as enrolment gives one: its own key, certified by the CA.
fn executor(ca: &ClusterAuthority) -> ExecutorIdentity {
    let key = ExecutorKey::generate().unwrap();
    let cert = ca.issue_executor(&key.public_key()).unwrap();
    key.into_identity(
        cert,
        ca.executor_ca_pem().to_string(),
        ca.driver_ca_pem().to_string(),
    )
}

/// An executor serving `store`'s segments over QUIC on loopback: its address, and the
/// bytes it has served.
fn serve(
    ca: &ClusterAuthority,
    store: &Arc<ShuffleStore>,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let server = executor(ca)
        .endpoint("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let addr = server.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let (store, count) = (store.clone(), served.clone());
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            if let Ok(c) = incoming.await {
                tokio::spawn(serve_connection(c, store.clone(), count.clone()));
            }
        }
    });
    (addr, served)
}

/// A fetcher working for executor `me`, with `store` as its own shuffle store.
fn fetcher(ca: &ClusterAuthority, me: u32, store: Arc<ShuffleStore>) -> Fetcher {
    let endpoint = executor(ca)
        .endpoint("127.0.0.1:0".parse().unwrap())
        .unwrap();
    Fetcher::new(endpoint, ExecutorId(me), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_without_the_job_s_capability_is_refused() {
    let ca = ClusterAuthority::generate().unwrap();
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

    let (addr, served) = serve(&ca, &store);
    let addr = addr.to_string();

    let other = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&ca, 7, Arc::new(ShuffleStore::new(other.path())));
    let src = SegmentSource {
        executor: ExecutorId(1),
        addr: addr.clone(),
        map_partition: 0,
        size: 4,
    };
    // Tenant A's task, naming tenant B's job: refused, and nothing is served.
    let err = fetcher
        .fetch(
            tenant_b,
            ShuffleId(0),
            0,
            std::slice::from_ref(&src),
            secret_a,
            0,
        )
        .await
        .remove(0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("bbbb"));
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 0);
    // With no capability at all (zeros): refused too.
    assert!(
        fetcher
            .fetch(
                tenant_b,
                ShuffleId(0),
                0,
                std::slice::from_ref(&src),
                [0; 16],
                0
            )
            .await
            .remove(0)
            .is_err()
    );
    // B's own task gets B's data; A's gets A's.
    let (data, remote) = fetcher
        .fetch(
            tenant_b,
            ShuffleId(0),
            0,
            std::slice::from_ref(&src),
            secret_b,
            0,
        )
        .await
        .remove(0)
        .unwrap();
    assert_eq!((data.as_slice(), remote), (&b"bbbb"[..], true));
    let (data, _) = fetcher
        .fetch(
            tenant_a,
            ShuffleId(0),
            0,
            std::slice::from_ref(&src),
            secret_a,
            0,
        )
        .await
        .remove(0)
        .unwrap();
    assert_eq!(data, b"aaaa");
    // Once the job is cleaned, its capability is gone with its files.
    store.remove_job(tenant_b);
    assert!(
        fetcher
            .fetch(
                tenant_b,
                ShuffleId(0),
                0,
                std::slice::from_ref(&src),
                secret_b,
                0
            )
            .await
            .remove(0)
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_executors_of_the_cluster_get_past_the_handshake() {
    let ca = ClusterAuthority::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShuffleStore::new(dir.path()));
    let (addr, _) = serve(&ca, &store);
    // A tenant holds the driver CA only, and no certificate: refused at the handshake.
    let tenant = flint_transport::tls::anonymous_endpoint(ca.driver_ca_pem()).unwrap();
    let r = async {
        let c = tenant
            .connect(addr, flint_transport::tls::EXECUTOR_NAME)?
            .await?;
        c.open_bi().await?.0.write_all(b"FLNT").await?;
        c.accept_bi().await?;
        anyhow::Ok(())
    }
    .await;
    assert!(
        r.is_err(),
        "a connection without a certificate is served nothing"
    );
    // An executor of another cluster: refused too.
    let other = ClusterAuthority::generate().unwrap();
    let stranger = executor(&other)
        .endpoint("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let fetcher = Fetcher::new(
        stranger,
        ExecutorId(9),
        Arc::new(ShuffleStore::new(dir.path())),
    );
    let src = SegmentSource {
        executor: ExecutorId(1),
        addr: addr.to_string(),
        map_partition: 0,
        size: 4,
    };
    assert!(
        fetcher
            .fetch(
                JobId(1),
                ShuffleId(0),
                0,
                std::slice::from_ref(&src),
                [0; 16],
                0
            )
            .await
            .remove(0)
            .is_err()
    );
}

/// A segment several chunks long crosses the network a chunk at a time: each answer is
/// at most a chunk, the last one shorter, and the chunks put back together hold every
/// frame whole, though frames span chunk boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_segment_is_fetched_in_chunks_whose_frames_reassemble() {
    let ca = ClusterAuthority::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShuffleStore::new(dir.path()));
    let (job, secret) = (JobId(3), [0x33; 16]);
    store.grant(job, secret).unwrap();
    // Frames of 1 MiB + 1 byte of a repeating index, 20 of them: 20 MiB in all, so
    // frames straddle every chunk boundary.
    let frames: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; (1 << 20) + 1]).collect();
    let mut segment = Vec::new();
    for f in &frames {
        segment.extend_from_slice(&(f.len() as u32).to_le_bytes());
        segment.extend_from_slice(f);
    }
    store
        .write(job, ShuffleId(0), 0, &[segment.clone()])
        .unwrap();
    let (addr, _) = serve(&ca, &store);
    let addr = addr.to_string();
    let other = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&ca, 8, Arc::new(ShuffleStore::new(other.path())));
    let src = SegmentSource {
        executor: ExecutorId(1),
        addr,
        map_partition: 0,
        size: segment.len() as u64,
    };
    let (mut offset, mut carry, mut got, mut chunks) = (0u64, Vec::new(), Vec::new(), 0);
    loop {
        let (chunk, remote) = fetcher
            .fetch(
                job,
                ShuffleId(0),
                0,
                std::slice::from_ref(&src),
                secret,
                offset,
            )
            .await
            .remove(0)
            .unwrap();
        assert!(remote && chunk.len() as u64 <= SEGMENT_CHUNK);
        chunks += 1;
        offset += chunk.len() as u64;
        carry.extend_from_slice(&chunk);
        let (whole, rest) = whole_frames(&carry).unwrap();
        got.extend(whole.into_iter().map(<[u8]>::to_vec));
        carry.drain(..rest);
        if (chunk.len() as u64) < SEGMENT_CHUNK {
            break;
        }
    }
    assert_eq!(offset, segment.len() as u64);
    assert_eq!(chunks, segment.len().div_ceil(SEGMENT_CHUNK as usize));
    assert!(carry.is_empty());
    assert_eq!(got, frames);
    // Past the end: nothing.
    let (chunk, _) = fetcher
        .fetch(
            job,
            ShuffleId(0),
            0,
            std::slice::from_ref(&src),
            secret,
            offset + 5,
        )
        .await
        .remove(0)
        .unwrap();
    assert!(chunk.is_empty());
}

/// A reduce task asks an executor for many segments in one request: the answers come in
/// the order asked, a segment that is not there is an error of its own while the others
/// arrive, a request naming too many map outputs is refused whole, and the executor's
/// own segments are read in one go the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_segments_come_in_one_request_each_with_its_own_answer() {
    use flint_protocol::wire::MAX_FETCH_MAPS;
    let ca = ClusterAuthority::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ShuffleStore::new(dir.path()));
    let (job, secret) = (JobId(4), [0x44; 16]);
    store.grant(job, secret).unwrap();
    for map in 0..3u32 {
        // Two reduce partitions; partition 1 of map m holds "m" repeated m + 1 times.
        let seg = vec![b'a' + map as u8; map as usize + 1];
        store
            .write(job, ShuffleId(0), map, &[Vec::new(), seg])
            .unwrap();
    }
    let (addr, served) = serve(&ca, &store);
    let addr = addr.to_string();
    let src = |map_partition: u32, executor: u32| SegmentSource {
        executor: ExecutorId(executor),
        addr: addr.clone(),
        map_partition,
        size: 3,
    };
    let other = tempfile::tempdir().unwrap();
    let remote = fetcher(&ca, 8, Arc::new(ShuffleStore::new(other.path())));
    // This executor's own segments: the same store, read in one blocking call.
    let local = fetcher(&ca, 1, store.clone());
    for (fetcher, is_remote) in [(&remote, true), (&local, false)] {
        let srcs = [src(2, 1), src(9, 1), src(0, 1), src(1, 1)];
        let got = fetcher.fetch(job, ShuffleId(0), 1, &srcs, secret, 0).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].as_ref().unwrap(), &(b"ccc".to_vec(), is_remote));
        let missing = got[1].as_ref().unwrap_err();
        assert_eq!(missing.map_partition, 9, "{missing}");
        assert_eq!(got[2].as_ref().unwrap().0, b"a");
        assert_eq!(got[3].as_ref().unwrap().0, b"bb");
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 6);
    // Past the limit of one request: every segment of it fails, none is served.
    let too_many: Vec<SegmentSource> = (0..=MAX_FETCH_MAPS as u32).map(|m| src(m % 3, 1)).collect();
    let got = remote
        .fetch(job, ShuffleId(0), 1, &too_many, secret, 0)
        .await;
    assert_eq!(got.len(), too_many.len());
    assert!(got.iter().all(Result::is_err));
    assert!(
        got[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("map outputs"),
        "{:?}",
        got[0]
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), 6);
    // A wrong capability: every segment is refused.
    let got = remote
        .fetch(job, ShuffleId(0), 1, &[src(0, 1), src(1, 1)], [0; 16], 0)
        .await;
    assert!(got.iter().all(Result::is_err));
}
