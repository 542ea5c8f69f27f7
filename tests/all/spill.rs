//! Data larger than a task's memory: with `task.memory=64m` (operators spill past a
//! quarter of it), an aggregation (of rows, and a frame's columnar group-by), a
//! `group_by_key`, a sort, a join (of rows, and of frames), a cogroup and a
//! `map_partitions` whose state is about 4 times the cap run on two executor processes,
//! spill, and give the results computed here. Each executor's peak RSS stays within the cap plus a stated overhead. A chaos
//! case SIGKILLs an executor while it spills.

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
    run_with(tmp, partitions, &[], args)
}

/// [`run`] with more settings.
fn run_with(
    tmp: &Path,
    partitions: u32,
    conf: &[&str],
    args: &[&Path],
) -> (String, serde_json::Value, Vec<u64>) {
    let mut cluster = ProcCluster::start(tmp, "127.0.0.1:0", &[]);
    let ids: Vec<u32> = (0..2).map(|_| cluster.add_executor(&[])).collect();
    let summary = tmp.join("summary.json");
    let parts = format!("shuffle.partitions={partitions}");
    let mut settings = vec![MEMORY, parts.as_str()];
    settings.extend_from_slice(conf);
    let job = cluster.submit(flint_udfs::TEST_JOBS, &settings, args, &summary);
    let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(600));
    assert!(ok, "job failed: {stderr}\n{}", cluster.driver_log());
    let rss = ids
        .iter()
        .map(|id| peak_rss(cluster.executors[id].0.id()))
        .collect();
    // Spill runs go with their tasks: nothing is left in the work dirs.
    for w in std::fs::read_dir(tmp).unwrap().flatten() {
        let left = walk(&w.path().join("spill"));
        assert!(left.is_empty(), "spill files left behind: {left:?}");
    }
    (stdout, read_summary(&summary), rss)
}

/// The files under `dir` (none if it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
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

/// The tasks spilled at least `min_runs` runs and more than `min_bytes`, and each
/// executor stayed within its memory.
fn check_spilled(summary: &serde_json::Value, rss: &[u64], min_runs: u64, min_bytes: u64) {
    let (bytes, runs) = spilled(summary);
    assert!(
        runs >= min_runs && bytes > min_bytes,
        "spilled {bytes} bytes in {runs} runs"
    );
    check_rss(rss);
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
    // Spilled rows are encoded (postcard): about half their size in the hash table.
    check_spilled(&summary, &rss, 4, 2 * (64 << 20));
}

#[test]
fn a_frame_group_by_larger_than_memory_spills_and_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 M distinct 16-byte keys from two Parquet files: each map task's table passes its
    // memory (it hands partial sums on), and the one reduce task's groups spill.
    let n: u64 = 3_000_000;
    let dir = tmp.path().join("pairs");
    let (stdout, summary, rss) = run(
        tmp.path(),
        1,
        &[Path::new("spill-frame"), Path::new(&n.to_string()), &dir],
    );
    let want = format!(
        "agg: distinct={n} total={} checksum={} rows={}",
        3 * n,
        3 * (n * (n - 1) / 2),
        2 * n
    );
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    check_spilled(&summary, &rss, 2, 64 << 20);
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
    check_spilled(&summary, &rss, 2, 0);
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
    check_spilled(&summary, &rss, 4, 0);
}

/// Keys `lo..hi`.
fn id_sum(lo: u64, hi: u64) -> u64 {
    (lo..hi).sum()
}

#[test]
fn a_join_of_sides_larger_than_memory_spills_and_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 M keys with 40-byte values on each side, in one reduce task: each side holds
    // about 250 MB there, 4 times the task's memory.
    let n: u64 = 3_000_000;
    let (stdout, summary, rss) = run(
        tmp.path(),
        1,
        &[Path::new("spill-join"), Path::new(&n.to_string())],
    );
    // Keys n/2..n are on both sides.
    let want = format!(
        "join: rows={} checksum={} bad=0",
        n - n / 2,
        id_sum(n / 2, n)
    );
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    check_spilled(&summary, &rss, 4, 4 * (64 << 20));
}

#[test]
fn a_frame_join_of_sides_larger_than_memory_spills_and_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    // The sides of the join above, from Parquet, joined as frames in one reduce task
    // (both shuffled: Parquet compresses them below the broadcast threshold) with a
    // quarter of the memory: its 16 buckets spill, and each is split again (a bucket's
    // side is twice the budget).
    let n: u64 = 2_000_000;
    let dir = tmp.path().join("sides");
    let (stdout, summary, rss) = run_with(
        tmp.path(),
        1,
        &["join.broadcast_threshold=0", "task.memory=16m"],
        &[
            Path::new("spill-frame-join"),
            Path::new(&n.to_string()),
            &dir,
        ],
    );
    let want = format!(
        "join: rows={} checksum={} bad=0",
        n - n / 2,
        id_sum(n / 2, n)
    );
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    check_spilled(&summary, &rss, 32, 2 * (64 << 20));
}

#[test]
fn a_cogroup_of_sides_larger_than_memory_spills_and_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    let n: u64 = 3_000_000;
    let (stdout, summary, rss) = run(
        tmp.path(),
        1,
        &[Path::new("spill-cogroup"), Path::new(&n.to_string())],
    );
    // Left has keys 0..n once, right n/2..3n/2 once; the checksum weighs a key's id by
    // its left count plus twice its right count.
    let want = format!(
        "cogroup: keys={} left={n} right={n} checksum={}",
        n / 2 + n,
        id_sum(0, n) + 2 * id_sum(n / 2, n / 2 + n)
    );
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    check_spilled(&summary, &rss, 4, 4 * (64 << 20));
}

#[test]
fn map_partitions_over_a_partition_larger_than_memory_streams_and_is_right() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 M rows of 48 bytes of padding coalesced into one partition: about 280 MB in the
    // guest, 4 times the task's memory.
    let n: u64 = 4_000_000;
    let (stdout, summary, rss) = run(
        tmp.path(),
        1,
        &[Path::new("spill-partition"), Path::new(&n.to_string())],
    );
    let want = format!("partition: rows={n} sum={} out_of_order=0", n * (n - 1) / 2);
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    // One run holds the partition: its rows, postcard-encoded (about 58 bytes each).
    check_spilled(&summary, &rss, 1, n * 50);
}

#[test]
fn a_key_whose_values_do_not_fit_fails_once_naming_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(tmp.path(), "127.0.0.1:0", &[]);
    cluster.add_executor(&[]);
    // 1 M values of 40 bytes under one key: about 60 MB, over the 16 MiB budget.
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &[MEMORY, "shuffle.partitions=1"],
        &[Path::new("spill-hot-key"), Path::new("1000000")],
        &tmp.path().join("summary.json"),
    );
    let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(600));
    assert!(!ok, "the job succeeded: {stdout}");
    assert!(
        stderr.contains("the values of a single key must fit in memory")
            && stderr.contains("budget of 16777216 bytes")
            && stderr.contains("another attempt would fail the same way"),
        "{stderr}"
    );
}

/// SIGKILLs one of two executors once it has spill files, mid-aggregation: the job is
/// still right, and the survivor keeps no spill file.
#[test]
fn an_executor_killed_while_it_spills_loses_nothing_and_leaves_no_spill_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = ProcCluster::start(tmp.path(), "127.0.0.1:0", &[]);
    // Executor k works in work-k.
    let ids: Vec<u32> = (0..2).map(|_| cluster.add_executor(&[])).collect();
    let summary = tmp.path().join("summary.json");
    let n: u64 = 4_000_000;
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &[MEMORY, "shuffle.partitions=2"],
        &[Path::new("spill-agg"), Path::new(&n.to_string())],
        &summary,
    );
    let work = |i: usize| tmp.path().join(format!("work-{}", i + 1)).join("spill");
    let end = std::time::Instant::now() + Duration::from_secs(300);
    let victim = loop {
        if let Some(i) = (0..2).find(|&i| !walk(&work(i)).is_empty()) {
            break i;
        }
        assert!(std::time::Instant::now() < end, "no executor spilled");
        std::thread::sleep(Duration::from_millis(20));
    };
    cluster.kill(ids[victim]);
    let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(600));
    assert!(ok, "job failed: {stderr}\n{}", cluster.driver_log());
    let want = format!(
        "agg: distinct={n} total={} checksum={}",
        3 * n,
        3 * (n * (n - 1) / 2)
    );
    assert!(stdout.contains(&want), "want {want}, got {stdout}");
    let survivor = work(1 - victim);
    let left = walk(&survivor);
    assert!(
        left.is_empty(),
        "spill files left on the survivor: {left:?}"
    );
}

/// A tenant's `max_executor_spill_bytes` caps what its tasks hold spilled on one executor:
/// an aggregation that needs more fails naming the quota and the tenant, and leaves no
/// spill file.
#[test]
fn a_tenant_s_spill_quota_on_an_executor_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let tenants = tmp.path().join("tenants.toml");
    let token = add_tenant_token(tmp.path(), &tenants, "small-disk");
    let mut file = std::fs::read_to_string(&tenants).unwrap();
    file.push_str("\nmax_executor_spill_bytes = \"4m\"\n");
    std::fs::write(&tenants, file).unwrap();
    let t = tenants.clone();
    let mut cluster = ProcCluster::start_with(tmp.path(), "127.0.0.1:0", &[], move |mut c| {
        c.arg("--tenants").arg(&t);
        c
    });
    cluster.add_executor(&[]);
    let job = submit_as(
        &cluster.client,
        &token,
        Path::new(flint_udfs::TEST_JOBS),
        &[MEMORY, "shuffle.partitions=1", "task.max_failures=1"],
        &[Path::new("spill-agg"), Path::new("2000000")],
    );
    let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(600));
    assert!(!ok, "the job succeeded: {stdout}");
    assert!(
        stderr.contains("tenant small-disk's max_executor_spill_bytes"),
        "{stderr}"
    );
    let spill = tmp.path().join("work-1").join("spill");
    let left = walk(&spill);
    assert!(left.is_empty(), "spill files left behind: {left:?}");
}
