//! The hostile-guest suite: each misbehaving job ends as a clear task error naming what
//! happened, while another tenant's job runs to a correct result on the same executors,
//! which keep serving.

use crate::cluster::*;
use crate::util::*;
use std::path::Path;
use std::time::Duration;

/// (scenario, settings for it, what the error must say)
const HOSTILE: &[(&str, &[&str], &str)] = &[
    (
        "spin-in-task",
        &["task.deadline=1s"],
        "deadline hit: the guest ran past its budget of 1s (task.deadline)",
    ),
    ("alloc-in-task", &["task.memory=64m"], "memory limit hit"),
    ("recurse-in-task", &[], "stack overflow"),
    (
        "unreachable-in-task",
        &[],
        "wasm `unreachable` instruction executed",
    ),
    ("divide-by-zero", &[], "attempt to divide by zero"),
    ("read-passwd", &[], "could not read /etc/passwd"),
    ("open-socket", &[], "could not open a socket"),
    (
        "spin-in-main",
        &["driver.main_deadline=2s"],
        "(driver.main_deadline)",
    ),
];

#[test]
fn hostile_guests_fail_clearly_while_another_tenant_s_job_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let tenants = tmp.path().join("tenants.toml");
    let hostile = add_tenant_token(tmp.path(), &tenants, "hostile");
    let good = add_tenant_token(tmp.path(), &tenants, "good");
    let t = tenants.clone();
    // Twelve programs of one tenant at once: more than the default per-tenant bound.
    let conf = ["driver.max_apps_per_tenant=16"];
    let mut cluster = ProcCluster::start_with(tmp.path(), "127.0.0.1:0", &conf, move |mut c| {
        c.arg("--tenants").arg(&t);
        c
    });
    cluster.add_executor(&[]);
    cluster.add_executor(&[]);
    let join = cluster.client.clone();
    let good_input = seeded_input(&tmp.path().join("good"), 4, 4, 5, 20);
    let expected = count_words(&good_input);
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "one line\ntwo lines\n").unwrap();
    let jobs = Path::new(flint_udfs::TEST_JOBS);

    // Components that are not what they claim: truncated, and importing what Flint does
    // not provide.
    let bytes = std::fs::read(jobs).unwrap();
    let truncated = tmp.path().join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let importer = tmp.path().join("importer.wasm");
    std::fs::write(
        &importer,
        wat::parse_str(
            r#"(component (import "evil:host/api" (instance (export "steal" (func)))))"#,
        )
        .unwrap(),
    )
    .unwrap();
    // A job built against another version of the interface.
    let other_version = tmp.path().join("other-version.wasm");
    std::fs::write(
        &other_version,
        wat::parse_str(
            r#"(component
                (core module $m (func (export "v") (result i32) i32.const 9))
                (core instance $i (instantiate $m))
                (func $v (result u32) (canon lift (core func $i "v")))
                (instance $job (export "interface-version" (func $v)))
                (export "flint:job/job@9.9.9" (instance $job)))"#,
        )
        .unwrap(),
    )
    .unwrap();
    let mut cases: Vec<(String, std::process::Child, String)> = Vec::new();
    for (name, conf, expect) in HOSTILE {
        let mut conf = conf.to_vec();
        conf.push("task.max_failures=1");
        let child = submit_as(&join, &hostile, jobs, &conf, &[Path::new(name), &small]);
        cases.push((name.to_string(), child, expect.to_string()));
    }
    let out = tmp.path().join("huge-out");
    cases.push((
        "huge-output".into(),
        submit_as(
            &join,
            &hostile,
            jobs,
            &["task.max_failures=1", "task.max_output_bytes=1m"],
            &[Path::new("huge-output"), &small, &out],
        ),
        "task.max_output_bytes".into(),
    ));
    cases.push((
        "truncated".into(),
        submit_as(&join, &hostile, &truncated, &[], &[]),
        "cannot load truncated".into(),
    ));
    cases.push((
        "other interface version".into(),
        submit_as(&join, &hostile, &other_version, &[], &[]),
        "flint:job@9.9.9".into(),
    ));
    cases.push((
        "unknown imports".into(),
        submit_as(&join, &hostile, &importer, &[], &[]),
        "evil:host/api".into(),
    ));

    // Meanwhile, another tenant's job on the same executors.
    let good_out = tmp.path().join("good-out");
    let good_job = submit_as(
        &join,
        &good,
        jobs,
        &["shuffle.partitions=3"],
        &[Path::new("slow-wordcount"), &good_input, &good_out],
    );

    for (name, child, expect) in cases {
        let (ok, _, stderr) = wait_child(child, Duration::from_secs(120));
        assert!(!ok, "{name} should fail");
        assert!(
            stderr.contains(&expect),
            "{name}: expected {expect:?} in:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked at") || name != "spin-in-task",
            "{stderr}"
        );
    }
    assert!(!out.exists(), "a failed job leaves no output");
    let (ok, _, stderr) = wait_child(good_job, Duration::from_secs(120));
    assert!(ok, "{stderr}\n{}", cluster.driver_log());
    assert_eq!(read_output(&good_out), expected);

    // A task's record keeps what its guest printed: here the panic message.
    let ui = cluster.ui();
    let all: serde_json::Value =
        serde_json::from_str(&crate::ui::get_body(&ui, "/api/v1/jobs")).unwrap();
    let printed = all.as_array().unwrap().iter().any(|j| {
        let stage: serde_json::Value = serde_json::from_str(&crate::ui::get_body(
            &ui,
            &format!("/api/v1/jobs/{}/stages/0", j["id"]),
        ))
        .unwrap_or_default();
        stage["tasks"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["output"]["stderr"]
                    .as_str()
                    .is_some_and(|e| e.contains("could not read /etc/passwd"))
            })
        })
    });
    assert!(printed, "the read-passwd task's stderr is in its record");

    // Every process is still up and the cluster still runs jobs.
    assert!(cluster.driver_alive());
    for (id, e) in cluster.executors.iter_mut() {
        assert!(e.0.try_wait().unwrap().is_none(), "executor {id} died");
    }
    let (ok, stdout, stderr) = wait_child(
        submit_as(&join, &good, jobs, &[], &[Path::new("count"), &small]),
        Duration::from_secs(60),
    );
    assert!(ok && stdout.contains("lines: 2"), "{stderr}");

    // Finished jobs leave no shuffle files behind in the executors' work dirs.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for w in std::fs::read_dir(tmp.path()).unwrap().flatten() {
            let shuffle = w.path().join("shuffle");
            if w.file_name().to_string_lossy().starts_with("work-") && shuffle.is_dir() {
                left.extend(
                    std::fs::read_dir(&shuffle)
                        .unwrap()
                        .flatten()
                        .map(|e| e.path()),
                );
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < end, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
