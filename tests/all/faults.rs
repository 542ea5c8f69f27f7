//! Fault handling beyond SIGKILL: a network partition made with namespaces and a
//! firewall rule, a straggler with and without speculation, graceful SIGTERM, and jobs
//! on an empty cluster.

use crate::cluster::*;
use crate::util::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A network namespace joined to this one by a veth pair; removed on drop.
struct Netns {
    name: String,
    host_ip: String,
    ns_ip: String,
}

impl Netns {
    /// `None` (after saying why) where namespaces cannot be made here.
    fn create() -> Option<Netns> {
        let n = std::process::id() % 200 + 20;
        let net = Netns {
            name: format!("flint-test-{}", std::process::id()),
            host_ip: format!("10.213.{n}.1"),
            ns_ip: format!("10.213.{n}.2"),
        };
        let (host_if, ns_if) = (format!("fl{n}h"), format!("fl{n}n"));
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), net.name.clone()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                ns_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                ns_if.clone(),
                "netns".into(),
                net.name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/24", net.host_ip),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if.clone(), "up".into()],
        ];
        let in_ns: Vec<Vec<String>> = vec![
            vec![
                "addr".into(),
                "add".into(),
                format!("{}/24", net.ns_ip),
                "dev".into(),
                ns_if.clone(),
            ],
            vec!["link".into(), "set".into(), ns_if, "up".into()],
            vec!["link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        let run = |args: &[String]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let mut result = steps.iter().try_for_each(|a| run(a));
        if result.is_ok() {
            result = in_ns.iter().try_for_each(|a| {
                let mut full = vec!["netns".into(), "exec".into(), net.name.clone(), "ip".into()];
                full.extend(a.iter().cloned());
                run(&full)
            });
        }
        if result.is_ok() {
            result = net
                .exec_cmd(Command::new("iptables").args(["-L", "-n"]))
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    o.status
                        .success()
                        .then_some(())
                        .ok_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned())
                })
                .map_err(|e| format!("iptables is needed (.ci/run installs it): {e}"));
        }
        match result {
            Ok(()) => Some(net),
            Err(e) => {
                eprintln!("SKIPPED: cannot create network namespaces here: {e}");
                None
            }
        }
    }

    /// `cmd`, run inside the namespace.
    fn exec_cmd(&self, cmd: &Command) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// Drops every packet in and out of the namespace.
    fn cut(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            let st = self
                .exec_cmd(Command::new("iptables").args(["-A", chain, "-j", "DROP"]))
                .status()
                .unwrap();
            assert!(st.success(), "iptables -A {chain} -j DROP");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn an_executor_cut_off_by_a_firewall_is_declared_lost_and_the_job_finishes() {
    let Some(net) = Netns::create() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = seeded_input(tmp.path(), 7, 8, 10, 40);
    let output = tmp.path().join("out");
    let summary = tmp.path().join("summary.json");
    let listen = format!("{}:0", net.host_ip);
    let mut cluster = ProcCluster::start(tmp.path(), &listen, FAST_FAILURE_DETECTION);
    cluster.add_executor_with(&listen, &[], |c| c);
    cluster.add_executor_with(&listen, &[], |c| c);
    let cut_off = cluster.add_executor_with(&format!("{}:0", net.ns_ip), &[], |c| net.exec_cmd(&c));
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &["shuffle.partitions=6"],
        &[Path::new("slow-wordcount"), &input, &output],
        &summary,
    );
    assert!(
        cluster.wait_for_successes(Duration::from_secs(60), "stage", 0, 3),
        "{}",
        cluster.driver_log()
    );
    net.cut();
    let cut_at = std::time::Instant::now();
    let lost = cluster.wait_for(Duration::from_secs(30), |l| {
        l.text.contains("executor lost") && l.field("executor") == Some(cut_off as u64)
    });
    let lost = lost.unwrap_or_else(|| {
        panic!(
            "executor {cut_off} was never declared lost\n{}",
            cluster.driver_log()
        )
    });
    let silent = lost.field("silent_ms").expect("silent_ms in the log line");
    assert!(
        silent >= 1000,
        "declared lost by the heartbeat timeout: {}",
        lost.text
    );
    eprintln!(
        "partition: executor {cut_off} declared lost {} ms after the cut (silent {silent} ms; executor.timeout = 1s)",
        lost.at.duration_since(cut_at).as_millis()
    );
    cluster.word_count_ok(job, &input, &output, &summary);
}

#[test]
fn speculation_copies_a_straggler_and_the_result_is_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seeded_input(tmp.path(), 11, 12, 10, 50);
    let expected = count_words(&input);
    let mut took = Vec::new();
    for speculation in [false, true] {
        let output = tmp.path().join(format!("out-{speculation}"));
        let summary = tmp.path().join(format!("summary-{speculation}.json"));
        run_ok(
            flint()
                .args([
                    "run",
                    flint_udfs::TEST_JOBS,
                    "--executors",
                    "3",
                    "--cores",
                    "1",
                ])
                .args(["--conf", &format!("speculation={speculation}")])
                .args(["--conf", "executor.heartbeat_interval=100ms"])
                .arg("--summary-json")
                .arg(&summary)
                .arg("--")
                .arg("straggler")
                .arg(&input)
                .arg(&output),
        );
        assert_eq!(read_output(&output), expected, "speculation={speculation}");
        let s = read_summary(&summary);
        let copies = s["speculative_tasks"].as_u64().unwrap();
        if speculation {
            assert!(copies >= 1, "the slow task got a copy: {s:#}");
            assert!(
                s["killed_tasks"].as_u64().unwrap() >= 1,
                "the losing attempt was killed: {s:#}"
            );
        } else {
            assert_eq!(copies, 0, "{s:#}");
        }
        assert_eq!(s["failed_tasks"], 0, "{s:#}");
        took.push(s["elapsed_ms"].as_u64().unwrap());
    }
    eprintln!(
        "straggler: {} ms without speculation, {} ms with it",
        took[0], took[1]
    );
}

#[test]
fn sigterm_drains_an_executor_without_failing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let input = seeded_input(tmp.path(), 3, 8, 10, 40);
    let output = tmp.path().join("out");
    let summary = tmp.path().join("summary.json");
    // A long timeout: leaving must be noticed from the executor's own word, and a busy
    // test machine must not make it look lost instead.
    let mut cluster = ProcCluster::start(
        tmp.path(),
        "127.0.0.1:0",
        &["executor.heartbeat_interval=100ms", "executor.timeout=60s"],
    );
    let leaving = cluster.add_executor(&["executor.decommission_timeout=10s"]);
    cluster.add_executor(&[]);
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &["shuffle.partitions=4"],
        &[Path::new("slow-wordcount"), &input, &output],
        &summary,
    );
    assert!(
        cluster
            .wait_for(Duration::from_secs(60), |l| l
                .text
                .contains("task succeeded"))
            .is_some()
    );
    let status = cluster.terminate(leaving);
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
    assert!(
        cluster
            .wait_for(Duration::from_secs(10), |l| {
                l.text.contains("executor is shutting down")
                    && l.field("executor") == Some(leaving as u64)
            })
            .is_some(),
        "{}",
        cluster.driver_log()
    );
    // Leaving is not failing: no task failed.
    cluster.word_count_ok(job, &input, &output, &summary);
    assert!(cluster.driver_alive());
    // And it is recorded as what it was: decommissioned, not disconnected (the driver's
    // shell once kept its own liveness flags, and never set this one).
    let ui = cluster.ui();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let executors = crate::ui::api(&ui, "/api/v1/executors");
        let state = executors
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == leaving)
            .map(|e| e["state"].clone());
        if state == Some("decommissioned".into()) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "executor {leaving} is {state:?}: {executors}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_job_on_an_empty_cluster_fails_in_bounded_time_and_a_late_executor_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "one line\nanother line\n").unwrap();
    let mut cluster = ProcCluster::start(tmp.path(), "127.0.0.1:0", FAST_FAILURE_DETECTION);
    let summary = tmp.path().join("s.json");
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &["scheduler.executor_wait_timeout=1s"],
        &[Path::new("count"), &input],
        &summary,
    );
    let (ok, _, stderr) = wait_child(job, Duration::from_secs(60));
    assert!(!ok);
    assert!(
        stderr.contains("scheduler.executor_wait_timeout = 1s")
            && stderr.contains("no executor is registered"),
        "{stderr}"
    );
    // The default wait is long enough for an executor that joins later.
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &[],
        &[Path::new("count"), &input],
        &summary,
    );
    std::thread::sleep(Duration::from_millis(500));
    cluster.add_executor(&[]);
    let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(60));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("lines: 2"), "{stdout}");
}
