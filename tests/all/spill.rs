//! Data larger than a task's memory: with `task.memory=64m` (operators spill past a
//! quarter of it), an aggregation, a `group_by_key` and a sort whose state is several times the cap
//! run on two executor processes, spill, and give the results computed here. Each
//! executor's peak RSS stays within the cap plus a stated overhead.

use crate::cluster::*;
use crate::util::*;
use std::path::Path;
use std::time::Duration;

const MEMORY: &str = "task.memory=64m";
/// What an executor process holds beside its guest: wasmtime and the runtime (~70 MiB
/// idle), the host's map-output buffer (32 MiB), shuffle bytes in flight (48 MiB) and
/// spill-run buffers.
const OVERHEAD: u64 = 256 << 20;

fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb << 10
}

/// Runs `args` of the test jobs on two executors; stdout, the summary and each
/// executor's peak RSS.
fn run(tmp: &Path, partitions: u32, args: &[&Path]) -> (String, serde_json::Value, Vec<u64>) {
    let mut cluster = ProcCluster::start(tmp, "127.0.0.1:0", &[]);
    let ids: Vec<u32> = (0..2).map(|_| cluster.add_executor(&[])).collect();
    let summary = tmp.join("summary.json");
    let parts = format!("shuffle.partitions={partitions}");
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &[MEMORY, parts.as_str()],
        args,
        &summary,
    );
    let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(600));
    assert!(ok, "job failed: {stderr}\n{}", cluster.driver_log());
    let rss = ids
        .iter()
        .map(|id| peak_rss(cluster.executors[id].0.id()))
        .collect();
    // Spill runs go with their tasks: nothing is left in the work dirs.
    for w in std::fs::read_dir(tmp).unwrap().flatten() {
        let spill = w.path().join("spill");
        if spill.exists() {
            let left: Vec<_> = walk(&spill);
            assert!(left.is_empty(), "spill files left behind: {left:?}");
        }
    }
    (stdout, read_summary(&summary), rss)
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Spill bytes and runs of every task, from the summary's executors.
fn spilled(summary: &serde_json::Value) -> (u64, u64) {
    summary["executors"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(b, n), e| {
            (
                b + e["metrics"]["spill_bytes"].as_u64().unwrap(),
                n + e["metrics"]["spill_count"].as_u64().unwrap(),
            )
        })
}

fn check_rss(rss: &[u64]) {
    for r in rss {
        assert!(
            *r <= (64 << 20) + OVERHEAD,
            "an executor's peak RSS was {} MiB, over the 64 MiB cap plus {} MiB",
            r >> 20,
            OVERHEAD >> 20
        );
    }
}

#[test]
fn an_aggregation_larger_than_memory_spills_and_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    // 6 M distinct 16-byte keys in one reduce task: about 290 MB of hash table, 4.5 times
    // the task's memory.
    let n: u64 = 6_000_000;
    let (stdout, summary, rss) = run(
        tmp.path(),
        1,
        &[Path::new("spill-agg"), Path::new(&n.to_string())],
    );
    let want = format!(
        "agg: distinct={n} total={} checksum={}",
        3 * n,
        3 * (n * (n - 1) / 2)
    );
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    let (bytes, runs) = spilled(&summary);
    // Spilled rows are encoded (postcard): about half their size in the hash table.
    assert!(
        runs >= 4 && bytes > 2 * (64 << 20),
        "spilled {bytes} bytes in {runs} runs"
    );
    check_rss(&rss);
}

#[test]
fn group_by_key_larger_than_memory_spills_and_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    // 1 M keys with two values each in one reduce task: about 100 MB of groups.
    let n: u64 = 1_000_000;
    let (stdout, summary, rss) = run(
        tmp.path(),
        1,
        &[Path::new("spill-group"), Path::new(&n.to_string())],
    );
    // Key i holds 2i and 2i + 1.
    let checksum: u64 = (0..n).map(|i| i * (4 * i + 1)).sum();
    let want = format!("group: keys={n} values={} checksum={checksum}", 2 * n);
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    let (bytes, runs) = spilled(&summary);
    assert!(
        runs >= 2 && bytes > 0,
        "spilled {bytes} bytes in {runs} runs"
    );
    check_rss(&rss);
}

fn scramble(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[test]
fn an_external_sort_gives_globally_ordered_parts() {
    let tmp = tempfile::tempdir().unwrap();
    // 7 M rows of 48 bytes of padding in two reduce tasks: each holds about 4 times the
    // task's memory.
    let n: u64 = 7_000_000;
    let out = tmp.path().join("sorted");
    let (_, summary, rss) = run(
        tmp.path(),
        2,
        &[Path::new("spill-sort"), Path::new(&n.to_string()), &out],
    );
    let parts = parts(&out);
    assert!(parts.len() >= 2, "{parts:?}");
    let (mut count, mut sum, mut last) = (0u64, 0u64, None::<u64>);
    for p in &parts {
        for line in std::fs::read_to_string(p).unwrap().lines() {
            let k: u64 = line.parse().unwrap();
            assert!(
                last.is_none_or(|l| l < k),
                "{k} after {last:?} in {}",
                p.display()
            );
            last = Some(k);
            count += 1;
            sum = sum.wrapping_add(k);
        }
    }
    let want: u64 = (0..n).fold(0u64, |s, x| s.wrapping_add(scramble(x)));
    assert_eq!((count, sum), (n, want));
    let (bytes, runs) = spilled(&summary);
    assert!(
        runs >= 4 && bytes > 0,
        "spilled {bytes} bytes in {runs} runs"
    );
    check_rss(&rss);
}
