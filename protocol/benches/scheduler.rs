//! The scheduler's sans-IO core alone: `--executors` simulated executors of `--cores`
//! slots run jobs whose every task succeeds at once; prints scheduling events per second
//! (launches plus statuses) for each job size, so that a cost per event that grows with
//! the job shows as a falling rate. Run with
//! `cargo bench -p flint-protocol --bench scheduler -- [--executors N] [--cores N] [TASKS…]`.
//! Also prints the scheduler's heap per pending task (bytes allocated by submitting the
//! job, over its task count) and its peak heap while the job runs.

use flint_protocol::dag::{JobDag, build_dag};
use flint_protocol::ids::{ExecutorId, JobId};
use flint_protocol::plan::{
    Action, LogicalPlan, Malformed, Node, Op, PlanLimits, ReadFormat, ShuffleSide,
};
use flint_protocol::scheduler::{Command, JobPolicy, Scheduler, SchedulerConf};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What one job cost: events, seconds, bytes per pending task once submitted, and the
/// peak heap (bytes) while it ran.
struct Run {
    events: u64,
    secs: f64,
    per_task: f64,
    peak: usize,
}

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

/// Runs one job to its end.
fn run(executors: u32, cores: u32, maps: u32, reduces: Option<u32>) -> Run {
    let mut s = Scheduler::new(SchedulerConf::default());
    for e in 1..=executors {
        s.executor_added(ExecutorId(e), cores, 0);
    }
    let dag = dag(maps, reduces);
    let partitions = reduces.unwrap_or(0);
    let tasks = dag
        .stages
        .iter()
        .map(|st| u64::from(st.partitions))
        .sum::<u64>();
    let start = Instant::now();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    s.submit_job(JobId(1), 1, dag, JobPolicy::default());
    // The DAG moved into the scheduler: what it holds now is per pending task.
    let per_task = LIVE.load(Ordering::Relaxed).saturating_sub(before) as f64 / tasks as f64;
    let mut running = VecDeque::new();
    let mut events = 0u64;
    let mut done = false;
    while !done {
        while let Some(c) = s.poll_command() {
            match c {
                Command::Launch {
                    attempt, executor, ..
                } => {
                    events += 1;
                    // A map task (of the first stage) reports a segment size per reduce
                    // partition.
                    let map = attempt.task.stage.index == 0 && reduces.is_some();
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
    Run {
        events,
        secs: start.elapsed().as_secs_f64(),
        per_task,
        peak: PEAK.load(Ordering::Relaxed).saturating_sub(before),
    }
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
        let r = run(executors, cores, n, None);
        println!(
            "one stage of {n:>9} tasks: {:>9} events in {:>7.3} s: {:>9.0} events/s; {:>5.0} B per pending task, peak {:.1} MiB",
            r.events,
            r.secs,
            r.events as f64 / r.secs,
            r.per_task,
            r.peak as f64 / 1048576.0
        );
    }
    for &n in &sizes {
        let maps = n / 2;
        let reduces = (n / 2).min(1000);
        let r = run(executors, cores, maps, Some(reduces));
        println!(
            "{maps:>9} maps -> {reduces:>5} reduces: {:>9} events in {:>7.3} s: {:>9.0} events/s; {:>5.0} B per pending task, peak {:.1} MiB",
            r.events,
            r.secs,
            r.events as f64 / r.secs,
            r.per_task,
            r.peak as f64 / 1048576.0
        );
    }
}
