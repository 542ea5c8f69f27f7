//! Chaos: a driver and three executor processes run a multi-stage job while the harness
//! SIGKILLs one executor at a chosen moment. Every trial's output must equal the count
//! computed here. `FLINT_CHAOS_TRIALS=100` runs more trials per scenario;
//! `FLINT_CHAOS_SEED=N` replays one.

use crate::cluster::*;
use crate::util::*;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const MAP_TASKS: u32 = 8;
const REDUCE_TASKS: u32 = 6;

#[derive(Clone, Copy, Debug)]
enum Moment {
    /// After some map tasks succeeded, before the map stage ends.
    DuringMap,
    /// As soon as a stage that writes a shuffle has finished: the victim's map outputs
    /// are lost just when the next stage needs them.
    BetweenStages,
    /// After some tasks of the last stage succeeded.
    DuringReduce,
}

fn trials() -> Vec<u64> {
    if let Ok(seed) = std::env::var("FLINT_CHAOS_SEED") {
        return vec![seed.parse().expect("FLINT_CHAOS_SEED is a number")];
    }
    let n: u64 = std::env::var("FLINT_CHAOS_TRIALS")
        .ok()
        .map(|v| v.parse().expect("FLINT_CHAOS_TRIALS is a number"))
        .unwrap_or(5);
    (1..=n).collect()
}

fn run_scenario(moment: Moment) {
    let mut detect = Vec::new();
    let mut took = Vec::new();
    for seed in trials() {
        let r = std::panic::catch_unwind(|| trial(moment, seed));
        match r {
            Ok((d, t)) => {
                detect.extend(d);
                took.push(t);
            }
            Err(e) => {
                eprintln!(
                    "chaos {moment:?}: trial with seed {seed} failed (replay with FLINT_CHAOS_SEED={seed})"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!(
        "chaos {moment:?}: {} trials passed; job ms {:?}; kill-to-lost ms {:?}",
        took.len(),
        took,
        detect
    );
}

/// One trial: returns (ms from the kill to the driver declaring the executor lost, when
/// it did before the job ended; the job's ms).
fn trial(moment: Moment, seed: u64) -> (Option<u64>, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(seed);
    let three_stages = seed.is_multiple_of(2);
    let input = seeded_input(tmp.path(), seed, MAP_TASKS, 10, 40);
    let output = tmp.path().join("out");
    let summary = tmp.path().join("summary.json");
    let mut cluster = ProcCluster::start(tmp.path(), "127.0.0.1:0", FAST_FAILURE_DETECTION);
    let ids: Vec<u32> = (0..3).map(|_| cluster.add_executor(&[])).collect();
    let victim = ids[rng.range(0, 2) as usize];
    let scenario = if three_stages {
        "slow-wordfreq"
    } else {
        "slow-wordcount"
    };
    let started = Instant::now();
    let partitions = format!("shuffle.partitions={REDUCE_TASKS}");
    // The strikes count the tasks of each stage: adaptive execution would have one task
    // read the small reduce partitions. (The join scenario below runs with it.)
    let job = cluster.submit(
        flint_udfs::TEST_JOBS,
        &[partitions.as_str(), "adaptive.enabled=false"],
        &[Path::new(scenario), &input, &output],
        &summary,
    );
    let last_stage = if three_stages { 2 } else { 1 };
    // When to strike, in successful tasks of which stage.
    let (stage, after) = match moment {
        Moment::DuringMap => (0, rng.range(1, MAP_TASKS as u64 - 2)),
        Moment::BetweenStages => {
            let s = if three_stages { rng.range(0, 1) } else { 0 };
            (s, if s == 0 { MAP_TASKS } else { REDUCE_TASKS } as u64)
        }
        Moment::DuringReduce => (last_stage, rng.range(1, REDUCE_TASKS as u64 - 2)),
    };
    assert!(
        cluster.wait_for_successes(Duration::from_secs(60), "stage", stage, after),
        "seed {seed}: never saw {after} tasks of stage {stage} succeed\n{}",
        cluster.driver_log()
    );
    let killed_at = cluster.kill(victim);
    let lost = cluster
        .wait_for(Duration::from_secs(5), |l| {
            l.text.contains("executor lost") && l.field("executor") == Some(victim as u64)
        })
        .map(|l| l.at.duration_since(killed_at).as_millis() as u64);
    let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(120));
    assert!(
        ok,
        "seed {seed}: {scenario} failed after executor {victim} was killed ({moment:?}, after {after} tasks of stage {stage})\nstdout: {stdout}\nstderr: {stderr}\ndriver:\n{}",
        cluster.driver_log()
    );
    let took = started.elapsed().as_millis() as u64;
    let counts = count_words(&input);
    let expected: HashMap<String, u64> = if three_stages {
        let mut freq = HashMap::new();
        for n in counts.values() {
            *freq.entry(n.to_string()).or_insert(0) += 1;
        }
        freq
    } else {
        counts
    };
    assert_eq!(read_output(&output), expected, "seed {seed}: wrong output");
    let s = read_summary(&summary);
    assert_eq!(
        s["failed_tasks"], 0,
        "seed {seed}: a lost executor is not a task failure: {s:#}"
    );
    eprintln!(
        "chaos {moment:?} seed {seed}: {scenario}, executor {victim} killed after {after} tasks of stage {stage}; fetch failures {}, {took} ms",
        s["fetch_failures"]
    );
    (lost, took)
}

#[test]
fn chaos_executor_killed_during_the_map_stage() {
    run_scenario(Moment::DuringMap);
}

#[test]
fn chaos_executor_killed_between_stages_loses_its_shuffle_output() {
    run_scenario(Moment::BetweenStages);
}

#[test]
fn chaos_executor_killed_during_the_reduce_stage() {
    run_scenario(Moment::DuringReduce);
}

/// The cost of recovery on the benchmark corpus: the word count on three executor
/// processes, once undisturbed and once with an executor SIGKILLed halfway through the
/// map stage. A measurement, not a check (run by hand, ideally with `--release`):
/// `cargo test --release --test all recovery_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn recovery_cost_on_the_benchmark_corpus() {
    let corpus = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-data/corpus-200mb.txt");
    assert!(
        corpus.is_file(),
        "run `cargo run --release -p flint-benchmarks -- --mb 200` first to make {}",
        corpus.display()
    );
    let mut times = Vec::new();
    for kill in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let output = tmp.path().join("out");
        let summary = tmp.path().join("summary.json");
        let mut cluster = ProcCluster::start(tmp.path(), "127.0.0.1:0", FAST_FAILURE_DETECTION);
        let ids: Vec<u32> = (0..3).map(|_| cluster.add_executor(&[])).collect();
        let started = Instant::now();
        let job = cluster.submit(
            flint_udfs::WORDCOUNT,
            &["files.max_partition_bytes=16m", "shuffle.partitions=6"],
            &[&corpus, &output],
            &summary,
        );
        if kill {
            assert!(
                cluster.wait_for_successes(Duration::from_secs(600), "stage", 0, 6),
                "map tasks finish"
            );
            cluster.kill(ids[1]);
        }
        let (ok, _, stderr) = wait_child(job, Duration::from_secs(900));
        assert!(ok, "{stderr}");
        times.push(started.elapsed().as_millis() as u64);
    }
    eprintln!(
        "recovery cost: {} ms undisturbed, {} ms with one of 3 executors SIGKILLed mid-map ({:.2}x)",
        times[0],
        times[1],
        times[1] as f64 / times[0] as f64
    );
}

/// A join whose both sides read a dataset cached by an earlier job: an executor is
/// SIGKILLed while the join runs, so its cached partitions are lost with it and are
/// recomputed from lineage (the slow word count) on the survivors.
#[test]
fn chaos_join_over_cached_partitions_survives_a_killed_executor() {
    for seed in trials() {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(seed);
        let input = seeded_input(tmp.path(), seed, MAP_TASKS, 10, 40);
        let output = tmp.path().join("out");
        let summary = tmp.path().join("summary.json");
        let mut cluster = ProcCluster::start(tmp.path(), "127.0.0.1:0", FAST_FAILURE_DETECTION);
        let ids: Vec<u32> = (0..3).map(|_| cluster.add_executor(&[])).collect();
        let victim = ids[rng.range(0, 2) as usize];
        let partitions = format!("shuffle.partitions={REDUCE_TASKS}");
        let job = cluster.submit(
            flint_udfs::TEST_JOBS,
            &[partitions.as_str()],
            &[Path::new("slow-cached-join"), &input, &output],
            &summary,
        );
        // Strike once the second job (the join) has finished a few tasks.
        let after = rng.range(1, 3);
        assert!(
            cluster.wait_for_successes(Duration::from_secs(60), "job", 2, after),
            "seed {seed}: the join never ran\n{}",
            cluster.driver_log()
        );
        cluster.kill(victim);
        let (ok, stdout, stderr) = wait_child(job, Duration::from_secs(120));
        assert!(
            ok,
            "seed {seed}: the join failed after executor {victim} was killed\nstdout: {stdout}\nstderr: {stderr}\ndriver:\n{}",
            cluster.driver_log()
        );
        let mut want = HashMap::new();
        for (w, n) in count_words(&input) {
            want.insert(format!("{w}\t{n}"), 2 * n);
        }
        assert_eq!(read_output(&output), want, "seed {seed}: wrong output");
        assert!(
            stdout.contains(&format!("words: {}", want.len())),
            "{stdout}"
        );
    }
}
