//! Tenants on one cluster: authentication before anything runs, certificates of another
//! cluster refused, path prefixes, and FAIR sharing against a flood.

use crate::cluster::*;
use crate::util::*;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

fn add_tenant(file: &Path, name: &str, allowed: &[&Path]) -> String {
    let mut cmd = flint();
    cmd.args(["tenant", "add", name, "--tenants"]).arg(file);
    for a in allowed {
        cmd.arg("--allowed-path").arg(a);
    }
    let out = run_ok(&mut cmd);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn submit_with(join: &Path, token: Option<&Path>, args: &[&Path]) -> (bool, String) {
    let mut cmd = flint();
    cmd.args(["submit", "--join"]).arg(join);
    if let Some(t) = token {
        cmd.arg("--token-file").arg(t);
    }
    cmd.arg(flint_udfs::TEST_JOBS).arg("--").args(args);
    let out = cmd.stderr(Stdio::piped()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn only_known_tenants_run_and_only_inside_their_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let alice_dir = tmp.path().join("alice");
    std::fs::create_dir_all(&alice_dir).unwrap();
    let input = alice_dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("in.txt"), "a b\nc a\n").unwrap();
    let tenants = tmp.path().join("tenants.toml");
    let alice = add_tenant(&tenants, "alice", &[&alice_dir]);
    let _bob = add_tenant(&tenants, "bob", &[]);
    assert_eq!(alice.len(), 64);
    assert!(!std::fs::read_to_string(&tenants).unwrap().contains(&alice));
    let alice_token = tmp.path().join("alice.token");
    std::fs::write(&alice_token, &alice).unwrap();
    let wrong = tmp.path().join("wrong.token");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();

    let t = tenants.clone();
    let mut cluster = ProcCluster::start_with(tmp.path(), "127.0.0.1:0", &[], move |mut c| {
        c.arg("--tenants").arg(&t);
        c
    });
    cluster.add_executor(&[]);
    let join = cluster.client.clone();
    let out = alice_dir.join("out");
    let save = [Path::new("panic-in-task"), input.as_path(), out.as_path()];

    let (ok, err) = submit_with(&join, None, &save);
    assert!(!ok && err.contains("requires a tenant token"), "{err}");
    let (ok, err) = submit_with(&join, Some(&wrong), &save);
    assert!(!ok && err.contains("authentication failed"), "{err}");
    assert!(!out.exists(), "nothing of a refused submission ran");
    assert!(
        !cluster.driver_log().contains("application started"),
        "{}",
        cluster.driver_log()
    );

    // Another cluster's credentials are refused at the TLS handshake.
    let other = tempfile::tempdir().unwrap();
    let foreign = ProcCluster::start(other.path(), "127.0.0.1:0", &[]);
    let mut forged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&foreign.client).unwrap()).unwrap();
    let real: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&join).unwrap()).unwrap();
    forged["driver"] = real["driver"].clone();
    let forged_join = tmp.path().join("forged.json");
    std::fs::write(&forged_join, forged.to_string()).unwrap();
    let (ok, err) = submit_with(&forged_join, Some(&alice_token), &save);
    assert!(!ok, "{err}");
    assert!(
        err.to_lowercase().contains("certificate")
            || err.contains("handshake")
            || err.contains("TLS")
            || err.contains("connect"),
        "{err}"
    );
    assert!(!cluster.driver_log().contains("application started"));

    // Alice outside her prefixes: refused, naming the path and her prefixes.
    let (ok, err) = submit_with(
        &join,
        Some(&alice_token),
        &[Path::new("count"), Path::new("/etc/passwd")],
    );
    assert!(!ok && err.contains("may not read /etc/passwd"), "{err}");
    assert!(err.contains(&alice_dir.display().to_string()), "{err}");
    let elsewhere = tmp.path().join("elsewhere");
    let (ok, err) = submit_with(
        &join,
        Some(&alice_token),
        &[Path::new("slow-wordcount"), &input, &elsewhere],
    );
    assert!(!ok && err.contains("may not write"), "{err}");
    assert!(!elsewhere.exists());
    // A link inside her directory that points out of it does not get her out.
    std::os::unix::fs::symlink("/etc", alice_dir.join("etc-link")).unwrap();
    let (ok, err) = submit_with(
        &join,
        Some(&alice_token),
        &[Path::new("count"), &alice_dir.join("etc-link/hostname")],
    );
    assert!(!ok && err.contains("may not read"), "{err}");
    std::fs::remove_file(alice_dir.join("etc-link")).unwrap();

    // Inside them: runs, as alice.
    let (ok, err) = submit_with(
        &join,
        Some(&alice_token),
        &[Path::new("slow-wordcount"), &input, &out],
    );
    assert!(ok, "{err}");
    assert_eq!(read_output(&out), count_words(&input));
    assert!(cluster.driver_log().contains("application started"));
}

/// A small tenant's job while another floods the cluster: under FAIR its task takes the
/// next free slot and it finishes while the flood is still running. Returns the small
/// job's task wait (its task's start minus its job's start, from the driver's API).
fn small_job_during_a_flood(mode: &str) -> (u64, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let tenants = tmp.path().join("tenants.toml");
    let flood_token = tmp.path().join("flood.token");
    std::fs::write(&flood_token, add_tenant(&tenants, "flood", &[])).unwrap();
    let small_token = tmp.path().join("small.token");
    std::fs::write(&small_token, add_tenant(&tenants, "small", &[])).unwrap();
    let t = tenants.clone();
    let conf = format!("scheduler.mode={mode}");
    let mut cluster = ProcCluster::start_with(tmp.path(), "127.0.0.1:0", &[&conf], move |mut c| {
        c.arg("--tenants").arg(&t);
        c
    });
    let ui = cluster.ui();
    cluster.add_executor(&[]);
    cluster.add_executor(&[]);
    let flood_dir = tmp.path().join("flood");
    std::fs::create_dir_all(&flood_dir).unwrap();
    let flood_input = seeded_input(&flood_dir, 9, 48, 10, 40);
    let mut flood = flint();
    flood
        .args(["submit", "--join"])
        .arg(&cluster.client)
        .arg("--token-file")
        .arg(&flood_token)
        .arg(flint_udfs::TEST_JOBS)
        .arg("--")
        .arg("slow-wordcount")
        .arg(&flood_input)
        .arg(tmp.path().join("flood-out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut flood = Guard(flood.spawn().unwrap());
    cluster
        .wait_for(Duration::from_secs(60), |l| {
            l.text.contains("task succeeded")
        })
        .expect("the flood runs");
    let small_input = tmp.path().join("small.txt");
    std::fs::write(&small_input, "one line\n").unwrap();
    let (ok, err) = submit_with(
        &cluster.client,
        Some(&small_token),
        &[Path::new("count"), &small_input],
    );
    assert!(ok, "{err}");
    let flood_still_running = flood.0.try_wait().unwrap().is_none();
    let jobs = crate::ui::api(&ui, "/api/v1/jobs");
    let small = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["tenant"] == "small")
        .expect("the small job is listed under its tenant")
        .clone();
    let stage = crate::ui::api(&ui, &format!("/api/v1/jobs/{}/stages/0", small["id"]));
    let task_start = stage["tasks"][0]["started_ms"].as_u64().unwrap();
    let wait = task_start.saturating_sub(small["started_ms"].as_u64().unwrap());
    let _ = flood.0.wait();
    (wait, flood_still_running)
}

#[test]
fn a_flooding_tenant_does_not_starve_another_under_fair_scheduling() {
    let (fair_wait, flood_running) = small_job_during_a_flood("FAIR");
    assert!(
        flood_running,
        "under FAIR the small job finished while the flood still ran"
    );
    let (fifo_wait, _) = small_job_during_a_flood("FIFO");
    eprintln!("small job's task wait during a flood: FAIR {fair_wait} ms, FIFO {fifo_wait} ms");
}

#[test]
fn usage_is_accounted_per_tenant_with_fuel_where_metered() {
    let tmp = tempfile::tempdir().unwrap();
    let tenants = tmp.path().join("tenants.toml");
    let alice = tmp.path().join("alice.token");
    std::fs::write(&alice, add_tenant(&tenants, "alice", &[])).unwrap();
    let bob = tmp.path().join("bob.token");
    std::fs::write(&bob, add_tenant(&tenants, "bob", &[])).unwrap();
    let text = std::fs::read_to_string(&tenants).unwrap();
    std::fs::write(
        &tenants,
        text.replace("[tenants.alice]\n", "[tenants.alice]\nmeter_fuel = true\n"),
    )
    .unwrap();
    let events = tmp.path().join("events");
    let (t, ev) = (tenants.clone(), events.clone());
    let mut cluster = ProcCluster::start_with(tmp.path(), "127.0.0.1:0", &[], move |mut c| {
        c.arg("--tenants").arg(&t).arg("--event-log").arg(&ev);
        c
    });
    cluster.add_executor(&[]);
    let input = seeded_input(&tmp.path().join("in"), 2, 3, 5, 10);
    let out = tmp.path().join("out");
    let (ok, err) = submit_with(
        &cluster.client,
        Some(&alice),
        &[Path::new("slow-wordcount"), &input, &out],
    );
    assert!(ok, "{err}");
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, "x\n").unwrap();
    let (ok, err) = submit_with(&cluster.client, Some(&bob), &[Path::new("count"), &small]);
    assert!(ok, "{err}");

    let usage = |tenant: &str, from: &[&str], path: &Path| {
        let out = run_ok(
            flint()
                .args(["usage", "--tenant", tenant])
                .args(from)
                .arg(path),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let live = usage("alice", &["--join"], &cluster.client);
    assert!(
        live.starts_with("tenant alice: 1 job(s), 4 task attempt(s)"),
        "3 map tasks, and 1 reduce task for the 3 small partitions (adaptive execution): {live}"
    );
    let fuel: u64 = live
        .split("fuel ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("alice is metered: {live}"));
    assert!(fuel > 10_000, "{live}");
    let bob_usage = usage("bob", &["--join"], &cluster.client);
    assert!(
        bob_usage.starts_with("tenant bob: 1 job(s)") && bob_usage.contains("fuel not metered"),
        "{bob_usage}"
    );
    // The event log tells the same.
    assert_eq!(usage("alice", &["--event-log"], &events), live);
}
