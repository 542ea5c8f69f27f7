//! The trust boundary, tried as a hostile tenant and as a compromised executor would,
//! against real driver and executor processes over real QUIC:
//! - a tenant's `client.json` (and token) cannot make an executor, by the CLI or by a
//!   hand-made client speaking the protocol;
//! - short driver programs that ask the driver for too much get an error naming the
//!   bound, within seconds, while another tenant's job runs to a right result and every
//!   process stays up with a bounded driver;
//! - an executor credential in the wrong hands (oversized frames, statuses for attempts
//!   that do not exist or run elsewhere, indices out of range) cannot panic or hijack the
//!   driver;
//! - a component the driver keeps is run again without its bytes only for the tenant
//!   that sent them: another tenant naming its hash must send bytes that match;
//! - the crate graph keeps the roles apart.

use crate::cluster::*;
use crate::util::*;
use flint_protocol::ids::{
    ExecutorId, JobId, ModuleHash, ShuffleId, StageId, TaskAttemptId, TaskId,
};
use flint_protocol::wire::{
    self, EnrolReply, EnrolRequest, ExecutorHello, FromExecutor, GuestOutput, Hello, TaskResult,
    TaskStatus, TaskSuccess, ToExecutor,
};
use flint_transport::net;
use flint_transport::{ClientFile, ClusterFile, tls};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A driver with tenants `a` and `b`, and `executors` executors.
fn tenant_cluster(tmp: &Path, conf: &[&str], executors: u32) -> (ProcCluster, PathBuf, PathBuf) {
    let tenants = tmp.join("tenants.toml");
    let a = add_tenant_token(tmp, &tenants, "a");
    let b = add_tenant_token(tmp, &tenants, "b");
    let t = tenants.clone();
    let mut cluster = ProcCluster::start_with(tmp, "127.0.0.1:0", conf, move |mut c| {
        c.arg("--tenants").arg(&t);
        c
    });
    for _ in 0..executors {
        cluster.add_executor(&[]);
    }
    (cluster, a, b)
}

fn submit(client: &Path, token: &Path, conf: &[&str], args: &[&Path]) -> std::process::Child {
    submit_as(client, token, Path::new(flint_udfs::TEST_JOBS), conf, args)
}

/// Tenant A's job while the test does its worst: a slow word count, to be checked with
/// [`a_s_job_is_right`].
fn start_a_s_job(
    cluster: &ProcCluster,
    tmp: &Path,
    a: &Path,
) -> (std::process::Child, PathBuf, PathBuf) {
    let input = seeded_input(&tmp.join("a-in"), 11, 6, 6, 30);
    let out = tmp.join("a-out");
    let child = submit(
        &cluster.client,
        a,
        &["shuffle.partitions=3"],
        &[Path::new("slow-wordcount"), &input, &out],
    );
    (child, input, out)
}

fn a_s_job_is_right(cluster: &ProcCluster, job: std::process::Child, input: &Path, out: &Path) {
    let (ok, _, stderr) = wait_child(job, Duration::from_secs(180));
    assert!(
        ok,
        "tenant A's job: {stderr}\ndriver:\n{}",
        cluster.driver_log()
    );
    assert_eq!(read_output(out), count_words(input));
}

/// A process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/PID/status")
}

/// The executor ids the driver's API lists as alive.
fn alive_executors(ui: &str) -> Vec<u64> {
    crate::ui::api(ui, "/api/v1/executors")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "alive")
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_tenant_s_client_file_cannot_make_an_executor() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, a, b) = tenant_cluster(tmp.path(), &[], 1);
    let ui = cluster.ui();
    let (job, input, out) = start_a_s_job(&cluster, tmp.path(), &a);

    // By the CLI: refused before anything is sent, saying what the file is.
    let started = Instant::now();
    let e = run_err(
        flint()
            .args(["executor", "--cores", "1000", "--join"])
            .arg(&cluster.client)
            .arg("--work-dir")
            .arg(tmp.path().join("rogue-work")),
    );
    eprintln!(
        "refused executor (CLI, client.json): {:?}",
        started.elapsed()
    );
    assert!(e.contains("tenant's client file"), "{e}");
    // With a tenant's token dressed up as an enrolment token: refused by the driver.
    let mut forged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cluster.client).unwrap()).unwrap();
    forged["file"] = "cluster".into();
    forged["enrolment_token"] = std::fs::read_to_string(&b).unwrap().trim().into();
    let forged_file = tmp.path().join("forged-cluster.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let started = Instant::now();
    let e = run_err(
        flint()
            .args(["executor", "--cores", "1000", "--join"])
            .arg(&forged_file)
            .arg("--work-dir")
            .arg(tmp.path().join("rogue-work")),
    );
    eprintln!(
        "refused executor (CLI, forged token): {:?}",
        started.elapsed()
    );
    assert!(e.contains("enrolment token is not this cluster's"), "{e}");

    // A submission with a wrong token: refused, typed (exit code 3), before anything runs.
    let wrong = tmp.path().join("wrong.token");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    let started = Instant::now();
    let refused = flint()
        .args(["submit", "--join"])
        .arg(&cluster.client)
        .arg("--token-file")
        .arg(&wrong)
        .arg(flint_udfs::TEST_JOBS)
        .args(["--", "count", "/etc/hostname"])
        .output()
        .unwrap();
    eprintln!("refused submission (wrong token): {:?}", started.elapsed());
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("(refused) authentication failed"));

    // By hand, with only what client.json holds: the driver CA and the address.
    let client = ClientFile::load(&cluster.client).unwrap();
    let token = std::fs::read_to_string(&b).unwrap().trim().to_string();
    rt().block_on(async {
        let ep = tls::anonymous_endpoint(&client.driver_ca_pem).unwrap();
        // Claiming to be an executor on a connection without an executor certificate.
        let conn = net::connect(&ep, &client.driver, tls::DRIVER_NAME)
            .await
            .unwrap();
        let (mut send, mut recv) = net::open(&conn).await.unwrap();
        let hello = Hello::Executor(ExecutorHello {
            cores: 1000,
            shuffle_addr: "127.0.0.1:9".into(),
            metrics_addr: None,
        });
        net::write_frame(&mut send, &hello).await.unwrap();
        match net::expect_frame::<ToExecutor>(&mut recv, wire::MAX_FRAME).await {
            Ok(ToExecutor::Refused { reason }) => {
                assert!(reason.contains("no executor certificate"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Enrolling with the tenant's token.
        let conn = net::connect(&ep, &client.driver, tls::DRIVER_NAME)
            .await
            .unwrap();
        let (mut send, mut recv) = net::open(&conn).await.unwrap();
        let key = tls::ExecutorKey::generate().unwrap();
        let enrol = Hello::Enrol(EnrolRequest {
            token: token.clone(),
            public_key: key.public_key(),
        });
        net::write_frame(&mut send, &enrol).await.unwrap();
        let reply: EnrolReply = net::expect_frame(&mut recv, 1 << 16).await.unwrap();
        assert!(reply.is_err(), "a tenant's token enrols nobody");
        // A peer of another protocol version learns the driver's from its preamble,
        // before anything is decoded, and the driver says why it closed.
        let conn = net::connect(&ep, &client.driver, tls::DRIVER_NAME)
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut old = wire::preamble::ours();
        old[4..].copy_from_slice(&(flint_protocol::PROTOCOL_VERSION - 1).to_le_bytes());
        send.write_all(&old).await.unwrap();
        let mut theirs = [0u8; wire::preamble::LEN];
        recv.read_exact(&mut theirs).await.unwrap();
        assert_eq!(theirs, wire::preamble::ours());
        let closed = conn.closed().await.to_string();
        assert!(closed.contains("protocol version"), "{closed}");

        // Fetching shuffle data from an executor: no certificate, no handshake.
        let executors = crate::ui::api(&ui, "/api/v1/executors");
        let addr: std::net::SocketAddr = executors[0]["addr"].as_str().unwrap().parse().unwrap();
        let peer = async {
            let c = ep.connect(addr, tls::EXECUTOR_NAME)?.await?;
            net::open(&c).await?;
            anyhow::Ok(())
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(20), peer)
                .await
                .map_or(true, |r| r.is_err()),
            "an executor serves a connection without an executor certificate"
        );
    });

    // Tenant A's job is unaffected, and the only executor is the operator's.
    a_s_job_is_right(&cluster, job, &input, &out);
    assert_eq!(alive_executors(&ui).len(), 1);
    assert_eq!(
        cluster.driver_log().matches("executor registered").count(),
        1,
        "{}",
        cluster.driver_log()
    );
}

/// (scenario, extra settings, what the error must name, the input it reads)
fn hostile_programs(tmp: &Path) -> Vec<(&'static str, Vec<&'static str>, &'static str, PathBuf)> {
    // A long name the glob must be matched against, and no file ending in `b`.
    let globs = tmp.join("globs");
    std::fs::create_dir_all(&globs).unwrap();
    std::fs::write(globs.join("a".repeat(200)), "x\n").unwrap();
    // 1.2 M short lines: each made 1 KiB, 1.2 GB in one partition.
    let lines = tmp.join("lines.txt");
    let mut text = String::with_capacity(12 << 20);
    for i in 0..1_200_000 {
        text.push_str(&format!("row {i}\n"));
    }
    std::fs::write(&lines, text).unwrap();
    let none = PathBuf::new();
    vec![
        (
            "many-partitions",
            vec![],
            "driver.max_partitions_per_stage",
            none.clone(),
        ),
        ("deep-chain", vec![], "driver.max_plan_depth", none.clone()),
        // `range` ends in a flat_map, copied into each branch: the operations bound
        // is reached before the partitions one.
        (
            "union-doubling",
            vec![],
            "driver.max_plan_nodes",
            none.clone(),
        ),
        ("glob-bomb", vec![], "no file matches", globs),
        ("collect-huge", vec![], "driver.max_result_size", lines),
        (
            "broadcast-bomb",
            vec!["driver.max_broadcast_bytes=150m"],
            "driver.max_broadcast_bytes",
            PathBuf::from("300"),
        ),
    ]
}

#[test]
fn hostile_programs_get_an_error_naming_the_bound_while_another_tenant_s_job_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, a, b) = tenant_cluster(tmp.path(), &[], 2);
    let ui = cluster.ui();
    let executors_before = alive_executors(&ui);
    let pids: Vec<u32> = cluster.executors.values().map(|g| g.0.id()).collect();
    let (job, input, out) = start_a_s_job(&cluster, tmp.path(), &a);
    let mut report = Vec::new();
    for (name, conf, expect, arg) in hostile_programs(tmp.path()) {
        let started = Instant::now();
        let args: Vec<&Path> = if arg.as_os_str().is_empty() {
            vec![Path::new(name)]
        } else {
            vec![Path::new(name), arg.as_path()]
        };
        let child = submit(&cluster.client, &b, &conf, &args);
        let (ok, _, stderr) = wait_child(child, Duration::from_secs(120));
        let took = started.elapsed();
        assert!(!ok, "{name} should fail");
        assert!(
            stderr.contains(expect),
            "{name}: expected {expect:?} in:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{name}: nothing panics: {stderr}"
        );
        if expect.starts_with("driver.") {
            // The submitter gets the kind typed, not only in words.
            assert!(
                stderr.contains(&format!("error: (limit {expect})")),
                "{name}: {stderr}"
            );
        }
        if name == "collect-huge" {
            assert!(
                stderr.contains("another attempt would fail the same way"),
                "a size limit is not retried: {stderr}"
            );
        }
        assert!(cluster.driver_alive(), "{name} took the driver down");
        let rss = peak_rss(cluster.driver_pid());
        eprintln!(
            "hostile {name}: refused in {:.2}s, driver peak RSS {} MiB: {}",
            took.as_secs_f64(),
            rss >> 20,
            stderr
                .lines()
                .find(|l| l.starts_with("error:"))
                .unwrap_or("")
        );
        report.push((name, took, rss));
    }
    a_s_job_is_right(&cluster, job, &input, &out);
    // The same processes, the same executors, a driver that stayed small.
    for (id, e) in cluster.executors.iter_mut() {
        assert!(e.0.try_wait().unwrap().is_none(), "executor {id} died");
    }
    assert_eq!(
        cluster
            .executors
            .values()
            .map(|g| g.0.id())
            .collect::<Vec<_>>(),
        pids
    );
    assert_eq!(alive_executors(&ui), executors_before);
    let peak = peak_rss(cluster.driver_pid());
    assert!(peak < 1 << 30, "driver peak RSS {} MiB", peak >> 20);
}

/// A compromised executor's connection to the driver, with a real executor certificate.
async fn rogue_connection(cluster: &ClusterFile) -> quinn::Connection {
    let identity = flint_executor_host::enrol(cluster).await.unwrap();
    let ep = identity.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    net::connect_with(
        &ep,
        identity.driver_client_config().unwrap(),
        &cluster.driver,
        tls::DRIVER_NAME,
    )
    .await
    .unwrap()
}

fn status(attempt: TaskAttemptId, result: Result<TaskSuccess, wire::TaskError>) -> FromExecutor {
    FromExecutor::Status(Box::new(TaskStatus {
        attempt,
        result,
        metrics: Default::default(),
        output: GuestOutput::default(),
        accumulators: vec![(u32::MAX, vec![1; 16])],
    }))
}

fn attempt(job: u64, stage: u32, partition: u32, attempt: u32) -> TaskAttemptId {
    TaskAttemptId {
        task: TaskId {
            stage: StageId {
                job: JobId(job),
                index: stage,
            },
            partition,
        },
        attempt,
    }
}

#[test]
fn a_compromised_executor_cannot_crash_the_driver_or_speak_for_another() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cluster, a, _) = tenant_cluster(tmp.path(), &[], 1);
    let ui = cluster.ui();
    let (job, input, out) = start_a_s_job(&cluster, tmp.path(), &a);
    assert!(
        cluster.wait_for_successes(Duration::from_secs(60), "stage", 0, 1),
        "tenant A's job runs"
    );
    let rss_before = peak_rss(cluster.driver_pid());
    let cluster_file = ClusterFile::load(&cluster.join).unwrap();
    // A's running attempts, all on the real executor.
    let jobs = crate::ui::api(&ui, "/api/v1/jobs");
    let a_job = jobs[0]["id"].as_u64().unwrap();
    let real: Vec<TaskAttemptId> = (0..2u32)
        .flat_map(|stage| {
            let s = crate::ui::api(&ui, &format!("/api/v1/jobs/{a_job}/stages/{stage}"));
            s["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    attempt(
                        a_job,
                        stage,
                        t["partition"].as_u64().unwrap() as u32,
                        t["attempt"].as_u64().unwrap() as u32,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!real.is_empty());
    rt().block_on(async {
        // A 200 MiB frame before registering: the connection closes, nothing is read.
        let conn = rogue_connection(&cluster_file).await;
        let (mut send, mut recv) = net::open(&conn).await.unwrap();
        send.write_all(&(200u32 << 20).to_le_bytes()).await.unwrap();
        let _ = send.write_all(&vec![0u8; 1 << 20]).await;
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            let mut b = [0u8; 1];
            recv.read(&mut b).await
        })
        .await;
        assert!(
            matches!(closed, Ok(Err(_)) | Ok(Ok(None))),
            "the driver closes a connection whose hello is oversized: {closed:?}"
        );

        // Registered, then statuses that do not count.
        let conn = rogue_connection(&cluster_file).await;
        let (mut send, mut recv) = net::open(&conn).await.unwrap();
        let hello = Hello::Executor(ExecutorHello {
            cores: 1,
            shuffle_addr: "127.0.0.1:9".into(),
            metrics_addr: None,
        });
        net::write_frame(&mut send, &hello).await.unwrap();
        let me = match net::expect_frame::<ToExecutor>(&mut recv, wire::MAX_FRAME)
            .await
            .unwrap()
        {
            ToExecutor::Welcome { executor, .. } => executor,
            other => panic!("{other:?}"),
        };
        let mut forged = vec![
            status(attempt(999, 0, 0, 0), Ok(TaskSuccess::Count(1))),
            status(
                attempt(a_job, 0, u32::MAX, 0),
                Ok(TaskSuccess::MapOutput {
                    sizes: vec![1; 100_000],
                }),
            ),
            status(
                attempt(a_job, u32::MAX, 0, u32::MAX),
                Ok(TaskSuccess::Count(7)),
            ),
            FromExecutor::CachedDropped {
                job: JobId::cache_of_app(u64::MAX >> 1),
                shuffle: ShuffleId(u32::MAX),
                maps: vec![u32::MAX; 10_000],
            },
        ];
        for a in &real {
            // Another executor's attempts: successes with junk, and fetch failures naming
            // executors that do not exist.
            forged.push(status(
                *a,
                Ok(TaskSuccess::MapOutput {
                    sizes: vec![u64::MAX],
                }),
            ));
            forged.push(status(
                *a,
                Ok(TaskSuccess::Rows {
                    rows: 1,
                    result: TaskResult::Stored { bytes: u64::MAX },
                }),
            ));
            forged.push(status(
                *a,
                Err(wire::TaskError {
                    kind: wire::TaskErrorKind::FetchFailed {
                        executor: ExecutorId(u32::MAX),
                        map_partition: u32::MAX,
                    },
                    chain: vec!["forged".into()],
                }),
            ));
        }
        for m in &forged {
            net::write_frame(&mut send, m).await.unwrap();
        }
        // Whatever the driver gives it, it answers with an output of the wrong kind.
        let answer = async {
            while let Ok(Some(msg)) =
                net::read_frame::<ToExecutor>(&mut recv, wire::MAX_FRAME).await
            {
                if let ToExecutor::Launch(desc) = msg {
                    let junk = status(desc.attempt, Ok(TaskSuccess::Count(u64::MAX)));
                    if net::write_frame(&mut send, &junk).await.is_err() {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), answer).await;
        conn.close(0u32.into(), b"rogue leaves");
        eprintln!(
            "rogue executor {} sent {} forged messages",
            me.0,
            forged.len()
        );
    });
    a_s_job_is_right(&cluster, job, &input, &out);
    assert!(cluster.driver_alive());
    let log = cluster.driver_log();
    assert!(
        log.contains("ignoring a status for an attempt that is not running on this executor"),
        "{log}"
    );
    assert!(
        log.contains("closing") || log.contains("before its hello"),
        "{log}"
    );
    let rss_after = peak_rss(cluster.driver_pid());
    eprintln!(
        "driver peak RSS before the rogue {} MiB, after {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "the oversized frame was not read into memory"
    );
    // The cluster still runs jobs.
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "one\ntwo\n").unwrap();
    let (ok, stdout, stderr) = wait_child(
        submit(&cluster.client, &a, &[], &[Path::new("count"), &small]),
        Duration::from_secs(60),
    );
    assert!(ok && stdout.contains("lines: 2"), "{stderr}");
}

#[test]
fn the_crate_graph_keeps_the_roles_apart() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |package: &str| {
        let out = std::process::Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "--edges",
                "normal",
                "--prefix",
                "none",
                "-p",
                package,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let client = names(&tree("flint-client"));
    assert!(
        !client.iter().any(|n| n.starts_with("wasmtime")),
        "the submit path links no sandbox: {client:?}"
    );
    let driver = names(&tree("flint-driver"));
    assert!(
        !driver.contains(&"flint-executor-host".to_string()),
        "{driver:?}"
    );
    let executor = names(&tree("flint-executor-host"));
    assert!(
        !executor.contains(&"flint-driver".to_string()),
        "{executor:?}"
    );
    for role in [&driver, &executor] {
        assert!(role.contains(&"flint-sandbox".to_string()));
        assert!(role.contains(&"flint-transport".to_string()));
    }
}

#[test]
fn the_web_ui_off_loopback_needs_a_token_and_shows_a_tenant_its_own_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let tenants = tmp.path().join("tenants.toml");
    let a = add_tenant_token(tmp.path(), &tenants, "a");
    let b = add_tenant_token(tmp.path(), &tenants, "b");
    let t = tenants.clone();
    let mut cluster = ProcCluster::start_with(tmp.path(), "127.0.0.1:0", &[], move |mut c| {
        c.arg("--tenants").arg(&t).args(["--ui-host", "0.0.0.0"]);
        c
    });
    cluster.add_executor(&[]);
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "x\ny\n").unwrap();
    for token in [&a, &b] {
        let (ok, _, stderr) = wait_child(
            submit(&cluster.client, token, &[], &[Path::new("count"), &small]),
            Duration::from_secs(60),
        );
        assert!(ok, "{stderr}");
    }
    let ui = cluster.ui();
    let get = |path: &str, token: Option<&Path>| {
        let t = token.map(|f| std::fs::read_to_string(f).unwrap().trim().to_string());
        crate::ui::http_get_as(&ui, path, t.as_deref())
    };
    assert_eq!(get("/api/v1/jobs", None).0, 401, "no token, no reading");
    assert_eq!(get("/", None).0, 401);
    let admin = cluster.join.with_file_name("admin.token");
    let (status, all) = get("/api/v1/jobs", Some(&admin));
    assert_eq!(status, 200);
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2, "the admin sees every job");
    let (status, mine) = get("/api/v1/jobs", Some(&a));
    assert_eq!(status, 200);
    let mine: serde_json::Value = serde_json::from_str(&mine).unwrap();
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 1, "a tenant sees its own jobs: {mine:?}");
    assert_eq!(mine[0]["tenant"], "a");
    let b_job = all
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["tenant"] == "b")
        .unwrap()["id"]
        .clone();
    assert_eq!(get(&format!("/api/v1/jobs/{b_job}"), Some(&a)).0, 404);
    assert_eq!(get(&format!("/jobs/{b_job}"), Some(&a)).0, 404);
    assert_eq!(
        get("/metrics", Some(&a)).0,
        403,
        "metrics count every tenant's work"
    );
    assert_eq!(get("/metrics", Some(&admin)).0, 200);
    // `flint usage` with the tenant's token, from client.json: its own usage only.
    let out = run_ok(
        flint()
            .args(["usage", "--tenant", "b", "--join"])
            .arg(&cluster.client)
            .arg("--token-file")
            .arg(&a),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("tenant a: 1 job(s)"), "{text}");
    assert!(cluster.driver_alive());
}

/// A hand-made submission of a component by its hash: `bytes` are sent only if the
/// driver asks for them. Returns whether it asked, and the application's result.
async fn submit_by_hash(
    client: &ClientFile,
    token: &Path,
    module: ModuleHash,
    len: u64,
    bytes: &[u8],
    args: &[&Path],
) -> (bool, Result<wire::AppSummary, wire::AppError>) {
    let endpoint = tls::anonymous_endpoint(&client.driver_ca_pem).unwrap();
    let conn = net::connect(&endpoint, &client.driver, tls::DRIVER_NAME)
        .await
        .unwrap();
    let (mut send, mut recv) = net::open(&conn).await.unwrap();
    let hello = wire::SubmitHello {
        name: "by-hash".into(),
        args: args.iter().map(|a| a.display().to_string()).collect(),
        conf: vec![],
        token: Some(std::fs::read_to_string(token).unwrap().trim().to_string()),
        component_bytes: len,
        component: module,
    };
    net::write_frame(&mut send, &Hello::Submit(hello))
        .await
        .unwrap();
    let upload = match net::read_frame::<wire::SubmitEvent>(&mut recv, wire::MAX_FRAME).await {
        Ok(Some(wire::SubmitEvent::Accepted { upload, .. })) => upload,
        other => panic!("not accepted: {other:?}"),
    };
    if upload {
        send.write_all(bytes).await.unwrap();
    }
    let _ = send.finish();
    loop {
        match net::read_frame::<wire::SubmitEvent>(&mut recv, wire::MAX_FRAME).await {
            Ok(Some(wire::SubmitEvent::Finished(r))) => {
                conn.close(0u32.into(), b"done");
                return (upload, r);
            }
            Ok(Some(_)) => {}
            other => panic!("no result: {other:?}"),
        }
    }
}

#[test]
fn a_component_is_sent_once_per_tenant_and_never_run_on_a_hash_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, a, b) = tenant_cluster(tmp.path(), &[], 1);
    let client = ClientFile::load(&cluster.client).unwrap();
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "x\ny\nz\n").unwrap();
    let real = std::fs::read(flint_udfs::TEST_JOBS).unwrap();
    let (module, len) = (flint_sandbox::hash_bytes(&real), real.len() as u64);
    let args = [Path::new("count"), small.as_path()];
    let lines = |r: &Result<wire::AppSummary, wire::AppError>| match r {
        Ok(s) => s.stdout.contains("lines: 3"),
        Err(e) => panic!("{e}"),
    };
    let garbage = vec![0u8; len as usize];
    rt().block_on(async {
        // First time: sent, and run.
        let (upload, r) = submit_by_hash(&client, &a, module, len, &real, &args).await;
        assert!(upload && lines(&r));
        // Again, after its application ended: not asked for; it runs from what the
        // driver kept (had it asked, the zeros would not match the hash).
        let (upload, r) = submit_by_hash(&client, &a, module, len, &garbage, &args).await;
        assert!(!upload && lines(&r), "{r:?}");
        // Another tenant naming the same hash must send the bytes, and bytes that are not
        // the component are refused.
        let (upload, r) = submit_by_hash(&client, &b, module, len, &garbage, &args).await;
        assert!(upload);
        match r {
            Err(e) => assert!(
                matches!(e.kind, wire::AppErrorKind::BadComponent)
                    && e.to_string().contains("do not match the hash"),
                "{e}"
            ),
            Ok(_) => panic!("tenant b ran tenant a's component on its hash alone"),
        }
        // The same size with a hash of nothing sent: asked for, and refused.
        let (upload, r) = submit_by_hash(&client, &a, ModuleHash([9; 32]), len, &real, &args).await;
        assert!(upload && r.is_err());
    });
    assert_eq!(
        cluster.driver_log().matches("application started").count(),
        2,
        "{}",
        cluster.driver_log()
    );
}
