//! The scheduler's sans-IO core alone: `--executors` simulated executors of `--cores`
//! slots run jobs whose every task succeeds at once; prints scheduling events per second
//! (launches plus statuses) for each job size, so that a cost per event that grows with
//! the job shows as a falling rate. Run with
//! `cargo bench -p flint-protocol --bench scheduler -- [--executors N] [--cores N] [TASKS…]`.

use flint_protocol::dag::{JobDag, build_dag};
use flint_protocol::ids::{ExecutorId, JobId};
use flint_protocol::plan::{
    Action, LogicalPlan, Malformed, Node, Op, PlanLimits, ReadFormat, ShuffleSide,
};
use flint_protocol::scheduler::{Command, JobPolicy, Scheduler, SchedulerConf};
use std::collections::VecDeque;
use std::time::Instant;

fn dag(maps: u32, reduces: Option<u32>) -> JobDag {
    let mut nodes = vec![Node::Files {
        paths: vec!["in".into()],
        format: ReadFormat::Text,
        min_partitions: 1,
        malformed: Malformed::Fail,
        filter: vec![],
        decode: Op::bare(1),
    }];
    if let Some(r) = reduces {
        nodes.push(Node::Shuffle {
            sides: vec![ShuffleSide {
                parent: 0,
                write: Op::bare(2),
                keep: None,
            }],
            partitions: Some(r),
            read: Op::bare(3),
            name: "reduce_by_key".into(),
            probes: vec![],
        });
    }
    let plan = LogicalPlan {
        nodes,
        action: Action::Count,
    };
    let limits = PlanLimits {
        max_partitions_per_stage: u32::MAX,
        max_tasks_per_job: u32::MAX,
        max_shuffle_blocks: u64::MAX,
        ..Default::default()
    };
    build_dag(&plan, &|_| maps, None, &limits).expect("a valid plan")
}

/// Runs one job to its end; (events, seconds, largest number of commands queued).
fn run(executors: u32, cores: u32, maps: u32, reduces: Option<u32>) -> (u64, f64) {
    let mut s = Scheduler::new(SchedulerConf::default());
    for e in 1..=executors {
        s.executor_added(ExecutorId(e), cores, 0);
    }
    let dag = dag(maps, reduces);
    let partitions = reduces.unwrap_or(0);
    let start = Instant::now();
    s.submit_job(JobId(1), 1, dag, JobPolicy::default());
    let mut running = VecDeque::new();
    let mut events = 0u64;
    let mut done = false;
    while !done {
        while let Some(c) = s.poll_command() {
            match c {
                Command::Launch {
                    attempt,
                    executor,
                    inputs,
                    ..
                } => {
                    events += 1;
                    // A map task reports a segment size per reduce partition.
                    let map = inputs.is_empty() && reduces.is_some();
                    running.push_back((attempt, executor, map));
                }
                Command::JobSucceeded { .. } => done = true,
                Command::JobFailed { error, .. } => panic!("{error:?}"),
                _ => {}
            }
        }
        let Some((attempt, executor, map)) = running.pop_front() else {
            assert!(done, "nothing runs and the job is not over");
            break;
        };
        let sizes = (map && attempt.task.stage.index == 0).then(|| vec![1u64; partitions as usize]);
        s.task_succeeded(attempt, executor, sizes);
        events += 1;
    }
    (events, start.elapsed().as_secs_f64())
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (mut executors, mut cores) = (1000u32, 4u32);
    let mut sizes: Vec<u32> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--executors" => {
                executors = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(executors)
            }
            "--cores" => cores = args.next().and_then(|v| v.parse().ok()).unwrap_or(cores),
            n => sizes.extend(n.parse::<u32>().ok()),
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000, 1_000_000];
    }
    println!("{executors} executors x {cores} slots");
    for &n in &sizes {
        let (events, secs) = run(executors, cores, n, None);
        println!(
            "one stage of {n:>9} tasks: {events:>9} events in {secs:>7.3} s: {:>9.0} events/s",
            events as f64 / secs
        );
    }
    for &n in &sizes {
        let maps = n / 2;
        let reduces = (n / 2).min(1000);
        let (events, secs) = run(executors, cores, maps, Some(reduces));
        println!(
            "{maps:>9} maps -> {reduces:>5} reduces: {events:>9} events in {secs:>7.3} s: {:>9.0} events/s",
            events as f64 / secs
        );
    }
}
