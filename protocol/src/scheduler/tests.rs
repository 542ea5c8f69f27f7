//! The scheduler's transitions, driven event by event on a virtual clock.

use super::*;
use crate::dag::{JobDag, build_dag};
use crate::ids::{ShuffleId, TaskId};
use crate::plan::{Action, LogicalPlan, Malformed, Node, Op, ReadFormat, ShuffleSide};

fn text_node() -> Node {
    Node::Files {
        paths: vec!["in".into()],
        format: ReadFormat::Text,
        min_partitions: 1,
        malformed: Malformed::Fail,
        filter: vec![],
        decode: Op::bare(1),
    }
}

fn shuffle_node(parent: usize, partitions: u32, name: &str) -> Node {
    Node::Shuffle {
        sides: vec![ShuffleSide {
            parent,
            write: Op::bare(2),
            keep: None,
        }],
        partitions: Some(partitions),
        read: Op::bare(3),
        name: name.into(),
        probes: vec![],
    }
}

const J: JobId = JobId(1);
const APP: u64 = 7;
const E1: ExecutorId = ExecutorId(1);
const E2: ExecutorId = ExecutorId(2);

fn two_stage_dag(maps: u32, reduces: u32) -> JobDag {
    let plan = LogicalPlan {
        nodes: vec![text_node(), shuffle_node(0, reduces, "reduce_by_key")],
        action: Action::Count,
    };
    build_dag(&plan, &|_| maps, None, &Default::default()).unwrap()
}

trait SubmitDefault {
    fn submit_job_default(&mut self, job: JobId, dag: JobDag);
}

impl SubmitDefault for Scheduler {
    fn submit_job_default(&mut self, job: JobId, dag: JobDag) {
        self.submit_job(job, APP, dag, JobPolicy::default());
    }
}

fn drain(s: &mut Scheduler) -> Vec<Command> {
    std::iter::from_fn(|| s.poll_command()).collect()
}

/// The launches among `cmds`, with the segments each task's executor resolves from the
/// map statuses (as `s` knows them now).
fn launches(s: &Scheduler, cmds: &[Command]) -> Vec<(TaskAttemptId, ExecutorId, Vec<MapLocation>)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Launch {
                attempt, executor, ..
            } => Some((
                *attempt,
                *executor,
                s.task_inputs(attempt.task)
                    .expect("a task is launched once its inputs are known"),
            )),
            _ => None,
        })
        .collect()
}

/// The launches `s` commands now (its other commands are dropped).
fn launched(s: &mut Scheduler) -> Vec<(TaskAttemptId, ExecutorId, Vec<MapLocation>)> {
    let cmds = drain(s);
    launches(s, &cmds)
}

fn ok() -> TaskFailure {
    TaskFailure {
        chain: vec!["boom".into()],
        retryable: true,
        limit: None,
    }
}

#[test]
fn tasks_fill_slots_and_wait_for_free_ones() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 2, 0);
    s.submit_job_default(J, two_stage_dag(3, 2));
    let l = launched(&mut s);
    assert_eq!(l.len(), 2, "two slots, three map tasks");
    assert!(l.iter().all(|(_, e, inputs)| *e == E1 && inputs.is_empty()));
    s.executor_added(E2, 1, 0);
    let l = launched(&mut s);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].1, E2);
    assert_eq!(l[0].0.task.partition, 2);
}

#[test]
fn reduce_stage_waits_for_every_map_task_then_gets_locations() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 4, 0);
    s.executor_added(E2, 4, 0);
    s.submit_job_default(J, two_stage_dag(2, 2));
    let maps = launched(&mut s);
    assert_eq!(maps.len(), 2);
    let (a0, e0, _) = maps[0].clone();
    s.task_succeeded(a0, e0, Some(vec![10, 0]));
    let cmds = drain(&mut s);
    assert_eq!(
        cmds,
        vec![Command::CommitTask { attempt: a0 }],
        "barrier holds"
    );
    let (a1, e1, _) = maps[1].clone();
    s.task_succeeded(a1, e1, Some(vec![5, 7]));
    let cmds = drain(&mut s);
    let reduces = launches(&s, &cmds);
    assert_eq!(reduces.len(), 2);
    let r0 = reduces.iter().find(|r| r.0.task.partition == 0).unwrap();
    assert_eq!(
        r0.2,
        vec![
            MapLocation {
                shuffle: ShuffleId(0),
                reduce: 0,
                map_partition: 0,
                executor: e0,
                size: 10
            },
            MapLocation {
                shuffle: ShuffleId(0),
                reduce: 0,
                map_partition: 1,
                executor: e1,
                size: 5
            }
        ]
    );
    let r1 = reduces.iter().find(|r| r.0.task.partition == 1).unwrap();
    assert_eq!(
        r1.2,
        vec![MapLocation {
            shuffle: ShuffleId(0),
            reduce: 1,
            map_partition: 1,
            executor: e1,
            size: 7
        }],
        "empty segments are skipped"
    );
    for (a, e, _) in reduces {
        s.task_succeeded(a, e, None);
    }
    let cmds = drain(&mut s);
    assert!(cmds.contains(&Command::JobSucceeded { job: J }));
    assert!(cmds.contains(&Command::CleanJob { job: J }));
}

#[test]
fn failed_task_is_retried_on_another_executor() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(1, 1));
    let l = launched(&mut s);
    let (a, e, _) = l[0].clone();
    s.task_failed(a, e, ok());
    let l = launched(&mut s);
    assert_eq!(l.len(), 1);
    assert_ne!(l[0].1, e, "retried elsewhere");
    assert_eq!(l[0].0.attempt, 1);
}

#[test]
fn job_fails_after_max_failures_with_first_and_last_errors() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.submit_job(
        J,
        APP,
        two_stage_dag(1, 1),
        JobPolicy {
            max_task_failures: 3,
            ..Default::default()
        },
    );
    for i in 0..3 {
        let l = launched(&mut s);
        assert_eq!(l.len(), 1, "attempt {i} launched");
        let (a, e, _) = l[0].clone();
        s.task_failed(
            a,
            e,
            TaskFailure {
                chain: vec![format!("error {i}")],
                retryable: true,
                limit: None,
            },
        );
    }
    let cmds = drain(&mut s);
    let failure = cmds
        .iter()
        .find_map(|c| match c {
            Command::JobFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .expect("job failed");
    assert!(failure.message.contains("failed 3 times"), "{failure:?}");
    assert_eq!(
        failure.causes,
        vec!["first failure: error 0", "last failure: error 2"]
    );
    assert!(launches(&s, &cmds).is_empty());
}

#[test]
fn non_retryable_failure_ends_the_job_at_once() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.submit_job_default(J, two_stage_dag(1, 1));
    let (a, e, _) = launched(&mut s)[0].clone();
    s.task_failed(
        a,
        e,
        TaskFailure {
            chain: vec!["bad module".into()],
            retryable: false,
            limit: None,
        },
    );
    let cmds = drain(&mut s);
    assert!(cmds.iter().any(|c| matches!(c, Command::JobFailed { .. })));
}

#[test]
fn late_duplicate_success_is_not_committed_twice() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(1, 1));
    let (a, e, _) = launched(&mut s)[0].clone();
    s.task_succeeded(a, e, Some(vec![1]));
    s.task_succeeded(a, e, Some(vec![1]));
    let commits = drain(&mut s)
        .into_iter()
        .filter(|c| matches!(c, Command::CommitTask { .. }))
        .count();
    assert_eq!(commits, 1);
}

#[test]
fn lost_executor_reruns_its_running_tasks_and_lost_map_outputs() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(2, 1));
    let maps = launched(&mut s);
    let on_e1 = maps.iter().find(|m| m.1 == E1).unwrap().clone();
    let on_e2 = maps.iter().find(|m| m.1 == E2).unwrap().clone();
    // E1 finishes its map task; E2 is still running when E1 dies.
    s.task_succeeded(on_e1.0, E1, Some(vec![3]));
    drain(&mut s);
    s.executor_disconnected(E1);
    assert!(launched(&mut s).is_empty(), "E2 is still busy");
    s.task_succeeded(on_e2.0, E2, Some(vec![4]));
    let l = launched(&mut s);
    assert_eq!(
        l.len(),
        1,
        "lost map output is recomputed before the reduce"
    );
    assert_eq!(l[0].0.task, on_e1.0.task);
    assert_eq!(l[0].0.attempt, 1);
    s.task_succeeded(l[0].0, E2, Some(vec![3]));
    let l = launched(&mut s);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].0.task.stage.index, 1, "reduce runs now");
    assert!(l[0].2.iter().all(|loc| loc.executor == E2));
}

/// The map statuses a reduce task names by version change whenever an output is
/// registered or lost, and a version is never reused: an executor holding one version
/// never resolves a task's segments from outputs that have moved since.
#[test]
fn map_status_versions_change_with_every_registered_or_lost_output() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(2, 1));
    let sh = ShuffleId(0);
    let v0 = s.map_outputs().version(J, sh).unwrap();
    let maps = launched(&mut s);
    s.task_succeeded(maps[0].0, maps[0].1, Some(vec![3]));
    drain(&mut s);
    let v1 = s.map_outputs().version(J, sh).unwrap();
    assert!(v1 > v0);
    assert!(!s.map_outputs().complete(J, sh));
    s.task_succeeded(maps[1].0, maps[1].1, Some(vec![4]));
    let reduce = launched(&mut s);
    assert_eq!(reduce.len(), 1);
    assert!(s.map_outputs().complete(J, sh));
    let v2 = s.map_outputs().version(J, sh).unwrap();
    assert!(v2 > v1);
    // The reduce fails to fetch from E1: its outputs are lost, and the version moves on.
    s.executor_disconnected(E1);
    assert!(!s.map_outputs().complete(J, sh));
    let v3 = s.map_outputs().version(J, sh).unwrap();
    assert!(v3 > v2);
    let rerun = launched(&mut s);
    let rerun = rerun.iter().find(|l| l.0.task.stage.index == 0).unwrap();
    s.task_succeeded(rerun.0, rerun.1, Some(vec![3]));
    drain(&mut s);
    assert!(s.map_outputs().complete(J, sh));
    assert!(s.map_outputs().version(J, sh).unwrap() > v3);
    // Another job's shuffle never reuses a version.
    s.submit_job_default(JobId(J.0 + 1), two_stage_dag(1, 1));
    assert!(s.map_outputs().version(JobId(J.0 + 1), sh).unwrap() > v3);
}

#[test]
fn running_task_on_lost_executor_is_not_a_failure() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.submit_job(
        J,
        APP,
        two_stage_dag(1, 1),
        JobPolicy {
            max_task_failures: 1,
            ..Default::default()
        },
    );
    drain(&mut s);
    s.executor_disconnected(E1);
    s.executor_added(E2, 1, 10);
    let cmds = drain(&mut s);
    assert!(!cmds.iter().any(|c| matches!(c, Command::JobFailed { .. })));
    assert_eq!(launches(&s, &cmds)[0].1, E2);
}

#[test]
fn jobs_are_served_first_in_first_out() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.submit_job_default(JobId(1), two_stage_dag(2, 1));
    s.submit_job_default(JobId(2), two_stage_dag(2, 1));
    s.executor_added(E1, 3, 0);
    let l = launched(&mut s);
    let jobs: Vec<u64> = l.iter().map(|x| x.0.task.stage.job.0).collect();
    assert_eq!(jobs, vec![1, 1, 2]);
}

const E3: ExecutorId = ExecutorId(3);

fn failed_job(cmds: &[Command]) -> Option<JobFailure> {
    cmds.iter().find_map(|c| match c {
        Command::JobFailed { error, .. } => Some(error.clone()),
        _ => None,
    })
}

/// Runs the map stage of a 2-map, 1-reduce job on E1 and E2 and returns the reduce
/// launch.
fn through_map_stage(
    s: &mut Scheduler,
    policy: JobPolicy,
) -> (TaskAttemptId, ExecutorId, Vec<MapLocation>) {
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job(J, APP, two_stage_dag(2, 1), policy);
    for (a, e, _) in launched(s) {
        s.task_succeeded(a, e, Some(vec![8]));
    }
    let l = launched(s);
    assert_eq!(l.len(), 1);
    l[0].clone()
}

#[test]
fn fetch_failure_reruns_only_the_lost_map_output_and_is_not_a_task_failure() {
    let mut s = Scheduler::new(SchedulerConf::default());
    let policy = JobPolicy {
        max_task_failures: 1,
        ..Default::default()
    };
    let (r, re, inputs) = through_map_stage(&mut s, policy);
    let lost_from = inputs.iter().find(|l| l.executor != re).unwrap().clone();
    s.task_fetch_failed(
        r,
        re,
        lost_from.executor,
        lost_from.map_partition,
        vec!["connection timed out".into()],
    );
    let cmds = drain(&mut s);
    assert!(failed_job(&cmds).is_none(), "{cmds:?}");
    let l = launches(&s, &cmds);
    assert_eq!(l.len(), 1, "only the lost map task runs again: {cmds:?}");
    assert_eq!(l[0].0.task.stage.index, 0);
    assert_eq!(l[0].0.task.partition, lost_from.map_partition);
    assert_ne!(
        l[0].1, lost_from.executor,
        "rerun away from the executor that failed to serve"
    );
    s.task_succeeded(l[0].0, l[0].1, Some(vec![8]));
    let l = launched(&mut s);
    assert_eq!(l.len(), 1, "the reduce resumes");
    assert_eq!(l[0].0.task, r.task);
    assert!(l[0].2.iter().all(|loc| loc.executor != lost_from.executor));
    s.task_succeeded(l[0].0, l[0].1, None);
    assert!(drain(&mut s).contains(&Command::JobSucceeded { job: J }));
}

#[test]
fn stage_fails_after_max_consecutive_fetch_failed_attempts() {
    let mut s = Scheduler::new(SchedulerConf::default());
    let policy = JobPolicy {
        max_stage_attempts: 2,
        ..Default::default()
    };
    let (r, re, inputs) = through_map_stage(&mut s, policy);
    let from = inputs.iter().find(|l| l.executor != re).unwrap().clone();
    s.task_fetch_failed(
        r,
        re,
        from.executor,
        from.map_partition,
        vec!["gone".into()],
    );
    let l = launched(&mut s);
    s.task_succeeded(l[0].0, l[0].1, Some(vec![8]));
    let (r2, re2, inputs2) = launched(&mut s)[0].clone();
    let from2 = inputs2[0].clone();
    s.task_fetch_failed(
        r2,
        re2,
        from2.executor,
        from2.map_partition,
        vec!["gone again".into()],
    );
    let failure = failed_job(&drain(&mut s)).expect("second stage attempt fails the job");
    assert!(
        failure.message.contains("failed 2 consecutive attempts")
            && failure
                .message
                .contains("stage.max_consecutive_attempts = 2"),
        "{failure:?}"
    );
    assert_eq!(failure.causes, vec!["gone again"]);
}

#[test]
fn fetch_failures_of_one_stage_attempt_count_once() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 2, 0);
    s.executor_added(E2, 2, 0);
    s.submit_job(
        J,
        APP,
        two_stage_dag(2, 2),
        JobPolicy {
            max_stage_attempts: 2,
            ..Default::default()
        },
    );
    for (a, e, _) in launched(&mut s) {
        s.task_succeeded(a, e, Some(vec![4, 4]));
    }
    let reduces = launched(&mut s);
    assert_eq!(reduces.len(), 2);
    // Both reduce tasks of the same stage attempt lose E2's output.
    for (a, e, _) in &reduces {
        s.task_fetch_failed(*a, *e, E2, 1, vec!["lost".into()]);
    }
    let cmds = drain(&mut s);
    assert!(
        failed_job(&cmds).is_none(),
        "one stage attempt failed, not two: {cmds:?}"
    );
}

#[test]
fn slow_task_gets_a_speculative_copy_and_the_first_to_finish_wins() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.executor_added(E3, 1, 0);
    let policy = JobPolicy {
        speculation: Some(Speculation::default()),
        ..Default::default()
    };
    s.submit_job(J, APP, two_stage_dag(3, 1), policy);
    let maps = launched(&mut s);
    assert_eq!(maps.len(), 3);
    s.set_time(100);
    s.task_succeeded(maps[1].0, maps[1].1, Some(vec![1]));
    s.task_succeeded(maps[2].0, maps[2].1, Some(vec![1]));
    drain(&mut s);
    // 2 of 3 done: below the 0.9 quantile (floor(2.7) = 2 is reached) -> median 100ms,
    // threshold max(300ms, 100ms). At 350ms the first task is slow.
    s.tick(300);
    assert!(launched(&mut s).is_empty(), "not slow yet");
    s.tick(350);
    let cmds = drain(&mut s);
    let copies: Vec<_> = cmds
        .iter()
        .filter(|c| {
            matches!(
                c,
                Command::Launch {
                    speculative: true,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(copies.len(), 1, "{cmds:?}");
    let (copy, on) = match copies[0] {
        Command::Launch {
            attempt, executor, ..
        } => (*attempt, *executor),
        _ => unreachable!(),
    };
    assert_eq!(copy.task, maps[0].0.task);
    assert_ne!(on, maps[0].1, "the copy runs on another executor");
    s.tick(400);
    assert!(launched(&mut s).is_empty(), "one copy only");
    // The copy wins; the original is killed; one commit.
    s.task_succeeded(copy, on, Some(vec![1]));
    let cmds = drain(&mut s);
    assert!(cmds.contains(&Command::KillTask {
        attempt: maps[0].0,
        executor: maps[0].1
    }));
    assert!(cmds.contains(&Command::CommitTask { attempt: copy }));
    s.task_killed(maps[0].0, maps[0].1);
    s.task_succeeded(maps[0].0, maps[0].1, Some(vec![1]));
    let cmds = drain(&mut s);
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::CommitTask { attempt } if attempt.task == copy.task))
    );
    assert_eq!(
        s.map_outputs().statuses(J, ShuffleId(0)).unwrap()[0]
            .as_ref()
            .unwrap()
            .executor,
        on
    );
}

#[test]
fn without_speculation_slow_tasks_get_no_copy() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(2, 1));
    let maps = launched(&mut s);
    s.set_time(10);
    s.task_succeeded(maps[1].0, maps[1].1, Some(vec![1]));
    drain(&mut s);
    s.tick(100_000);
    assert!(launched(&mut s).is_empty());
}

#[test]
fn an_executor_failing_tasks_is_excluded_for_the_stage_then_the_job() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 4, 0);
    let policy = JobPolicy {
        exclusion: Some(Exclusion {
            max_failed_tasks_per_stage: 2,
            max_failed_tasks_per_job: 3,
        }),
        max_task_failures: 10,
        ..Default::default()
    };
    s.submit_job(J, APP, two_stage_dag(6, 1), policy);
    let first = launched(&mut s);
    let on_e1: Vec<_> = first.iter().filter(|l| l.1 == E1).cloned().collect();
    assert_eq!(on_e1.len(), 1);
    s.task_failed(on_e1[0].0, E1, ok());
    let next = launched(&mut s);
    let again_e1: Vec<_> = next.iter().filter(|l| l.1 == E1).cloned().collect();
    assert_eq!(
        again_e1.len(),
        1,
        "E1 is not excluded after one failure: {next:?}"
    );
    assert_ne!(
        again_e1[0].0.task, on_e1[0].0.task,
        "the failed task avoids E1"
    );
    s.task_failed(again_e1[0].0, E1, ok());
    let cmds = drain(&mut s);
    let excluded = cmds.iter().find_map(|c| match c {
        Command::ExecutorExcluded {
            executor,
            stage,
            reason,
            ..
        } => Some((*executor, *stage, reason.clone())),
        _ => None,
    });
    let (ex, stage, reason) = excluded.expect("E1 is excluded for the stage");
    assert_eq!((ex, stage), (E1, Some(0)));
    assert!(reason.contains("2 different tasks"), "{reason}");
    assert!(launches(&s, &cmds).iter().all(|l| l.1 != E1), "{cmds:?}");
    assert_eq!(s.exclusions(J), vec![(E1, Some(0), reason)]);
}

#[test]
fn a_stage_every_executor_is_excluded_from_fails_its_job_with_the_reasons() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 2, 0);
    let policy = JobPolicy {
        exclusion: Some(Exclusion::default()),
        max_task_failures: 10,
        ..Default::default()
    };
    s.submit_job(J, APP, two_stage_dag(2, 1), policy);
    for (a, e, _) in launched(&mut s) {
        s.task_failed(
            a,
            e,
            TaskFailure {
                chain: vec![format!("bad disk in {}", a.task.partition)],
                retryable: true,
                limit: None,
            },
        );
    }
    let failure = failed_job(&drain(&mut s)).expect("nothing can run the stage");
    assert!(
        failure.message.contains("every live executor is excluded"),
        "{failure:?}"
    );
    assert!(
        failure.causes[0].starts_with("executor 1 is excluded: 2 different tasks"),
        "{failure:?}"
    );
    assert!(
        failure.causes[1].starts_with("last failure: bad disk"),
        "{failure:?}"
    );
}

#[test]
fn a_job_on_an_empty_cluster_fails_after_the_wait_timeout() {
    let mut s = Scheduler::new(SchedulerConf::default());
    let policy = JobPolicy {
        executor_wait_timeout_ms: 1000,
        ..Default::default()
    };
    s.submit_job(J, APP, two_stage_dag(1, 1), policy);
    assert_eq!(
        drain(&mut s),
        vec![Command::StageStarted {
            stage: StageId { job: J, index: 0 },
            attempt: 0
        }]
    );
    s.tick(10);
    s.tick(900);
    assert!(drain(&mut s).is_empty(), "still waiting");
    s.tick(1010);
    let failure = failed_job(&drain(&mut s)).expect("timed out");
    assert!(
        failure
            .message
            .contains("scheduler.executor_wait_timeout = 1s"),
        "{failure:?}"
    );
    assert_eq!(
        failure.causes,
        vec!["no executor is registered with the driver"]
    );
}

#[test]
fn an_executor_that_joins_a_waiting_job_is_used_at_once() {
    let mut s = Scheduler::new(SchedulerConf::default());
    let policy = JobPolicy {
        executor_wait_timeout_ms: 1000,
        ..Default::default()
    };
    s.submit_job(J, APP, two_stage_dag(1, 1), policy);
    s.tick(900);
    s.executor_added(E1, 1, 950);
    assert_eq!(launched(&mut s).len(), 1);
    s.heartbeat(E1, 5000);
    s.tick(5000);
    assert!(failed_job(&drain(&mut s)).is_none());
}

#[test]
fn a_decommissioned_executor_gets_no_tasks_and_handed_back_ones_are_not_failures() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.submit_job(
        J,
        APP,
        two_stage_dag(1, 1),
        JobPolicy {
            max_task_failures: 1,
            ..Default::default()
        },
    );
    let (a, _, _) = launched(&mut s)[0].clone();
    s.executor_decommissioning(E1);
    s.task_killed(a, E1);
    assert!(launched(&mut s).is_empty(), "nothing goes back to E1");
    assert_eq!(s.total_cores(), 0);
    s.executor_added(E2, 1, 10);
    let cmds = drain(&mut s);
    assert!(failed_job(&cmds).is_none());
    let l = launches(&s, &cmds);
    assert_eq!((l[0].0.task, l[0].1), (a.task, E2));
    s.executor_disconnected(E1);
    assert!(failed_job(&drain(&mut s)).is_none());
}

#[test]
fn a_failed_job_kills_its_running_attempts() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 2, 0);
    s.submit_job(
        J,
        APP,
        two_stage_dag(2, 1),
        JobPolicy {
            max_task_failures: 1,
            ..Default::default()
        },
    );
    let l = launched(&mut s);
    s.task_failed(l[0].0, E1, ok());
    let cmds = drain(&mut s);
    assert!(cmds.contains(&Command::KillTask {
        attempt: l[1].0,
        executor: E1
    }));
    assert!(failed_job(&cmds).is_some());
}

#[test]
fn a_success_reported_by_a_lost_executor_does_not_register_map_output() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(1, 1));
    let (a, e, _) = launched(&mut s)[0].clone();
    s.executor_disconnected(e);
    let relaunch = launched(&mut s);
    assert_eq!(relaunch.len(), 1);
    s.task_succeeded(a, e, Some(vec![5]));
    let cmds = drain(&mut s);
    assert!(
        !cmds.contains(&Command::CommitTask { attempt: a }),
        "{cmds:?}"
    );
}

#[test]
fn losing_outputs_of_two_shuffles_reruns_the_upstream_stage_first() {
    // text → shuffle A → shuffle B → result; E2 holds map outputs of both shuffles
    // when it dies during the last stage.
    let plan = LogicalPlan {
        nodes: vec![
            text_node(),
            shuffle_node(0, 2, "a"),
            shuffle_node(1, 2, "b"),
        ],
        action: Action::Count,
    };
    let dag = build_dag(&plan, &|_| 2, None, &Default::default()).unwrap();
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, dag);
    for stage in 0..2 {
        let l = launched(&mut s);
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|x| x.0.task.stage.index == stage));
        for (a, e, _) in l {
            s.task_succeeded(a, e, Some(vec![3, 3]));
        }
    }
    let last = launched(&mut s);
    assert!(last.iter().all(|x| x.0.task.stage.index == 2));
    let e1_last = last.iter().find(|x| x.1 == E1).unwrap().0;
    s.task_succeeded(e1_last, E1, None);
    drain(&mut s);
    s.executor_disconnected(E2);
    let l = launched(&mut s);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].0.task.stage.index, 0, "stage 0's lost output first");
    assert_eq!(l[0].1, E1);
    s.task_succeeded(l[0].0, E1, Some(vec![3, 3]));
    let l = launched(&mut s);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].0.task.stage.index, 1, "then stage 1's");
    s.task_succeeded(l[0].0, E1, Some(vec![3, 3]));
    let l = launched(&mut s);
    assert_eq!(l.len(), 1);
    assert_eq!(
        l[0].0.task.stage.index, 2,
        "then the result task E2 was running"
    );
    s.task_succeeded(l[0].0, E1, None);
    assert!(drain(&mut s).contains(&Command::JobSucceeded { job: J }));
}

#[test]
fn an_executor_failing_across_stages_is_excluded_for_the_whole_job() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    let policy = JobPolicy {
        exclusion: Some(Exclusion {
            max_failed_tasks_per_stage: 10,
            max_failed_tasks_per_job: 2,
        }),
        max_task_failures: 10,
        ..Default::default()
    };
    s.submit_job(J, APP, two_stage_dag(1, 1), policy);
    // The one map task fails on E1 twice (E2 busy elsewhere is not needed: the soft
    // avoidance sends the retry to E2, so fail it there once and back on E1).
    let (a, e, _) = launched(&mut s)[0].clone();
    assert_eq!(e, E1);
    s.task_failed(a, E1, ok());
    let (a, e, _) = launched(&mut s)[0].clone();
    assert_eq!(e, E2);
    s.task_failed(a, E2, ok());
    let (a, e, _) = launched(&mut s)[0].clone();
    assert_eq!(e, E1, "both failed it once: least loaded again");
    s.task_failed(a, E1, ok());
    let cmds = drain(&mut s);
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            Command::ExecutorExcluded {
                executor: E1,
                stage: None,
                ..
            }
        )),
        "{cmds:?}"
    );
    let l = launches(&s, &cmds);
    assert_eq!(l[0].1, E2);
    s.task_succeeded(l[0].0, E2, Some(vec![1]));
    let l = launched(&mut s);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].1, E2, "the next stage avoids E1 too");
}

fn pool(name: &str, weight: u32, min_share: u32, max_slots: Option<u32>) -> JobPolicy {
    JobPolicy {
        pool: Pool {
            name: name.into(),
            weight,
            min_share,
            max_slots,
        },
        ..Default::default()
    }
}

/// Tenant A floods the cluster with 50 jobs, then tenant B submits one; returns the
/// tenant of each task launched when A's first task finishes.
fn flood(fair: bool) -> Vec<u64> {
    let mut s = Scheduler::new(SchedulerConf {
        fair,
        ..Default::default()
    });
    s.executor_added(E1, 2, 0);
    for j in 1..=50 {
        s.submit_job(JobId(j), APP, two_stage_dag(2, 1), pool("a", 1, 0, None));
    }
    s.submit_job(JobId(100), APP, two_stage_dag(2, 1), pool("b", 1, 0, None));
    let first = launched(&mut s);
    assert!(
        first.iter().all(|l| l.0.task.stage.job.0 <= 50),
        "A came first"
    );
    s.task_succeeded(first[0].0, E1, Some(vec![1]));
    launched(&mut s)
        .iter()
        .map(|l| l.0.task.stage.job.0)
        .collect()
}

#[test]
fn fair_pools_let_a_small_tenant_in_past_a_flood_and_fifo_does_not() {
    assert_eq!(flood(true), vec![100], "FAIR: B's job takes the free slot");
    assert_ne!(flood(false), vec![100], "FIFO: A's queue comes first");
}

#[test]
fn a_pool_never_exceeds_its_max_slots_and_min_share_is_served_first() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.submit_job(
        JobId(1),
        APP,
        two_stage_dag(4, 1),
        pool("capped", 1, 0, Some(1)),
    );
    s.submit_job(JobId(2), APP, two_stage_dag(4, 1), pool("big", 1, 0, None));
    s.executor_added(E1, 4, 0);
    let l = launched(&mut s);
    let capped = l.iter().filter(|x| x.0.task.stage.job.0 == 1).count();
    assert_eq!((capped, l.len()), (1, 4), "{l:?}");

    // With weights equal, a pool below its min share goes first.
    let mut s = Scheduler::new(SchedulerConf::default());
    s.submit_job(JobId(1), APP, two_stage_dag(4, 1), pool("a", 10, 0, None));
    s.submit_job(JobId(2), APP, two_stage_dag(4, 1), pool("b", 1, 2, None));
    s.executor_added(E1, 3, 0);
    let l = launched(&mut s);
    let b = l.iter().filter(|x| x.0.task.stage.job.0 == 2).count();
    assert_eq!(
        b, 2,
        "b gets its min share of 2 before a's weight counts: {l:?}"
    );
}

/// text → cache → count, with the cached dataset's partitions kept by an earlier job.
fn cached_dag() -> JobDag {
    let plan = LogicalPlan {
        nodes: vec![
            text_node(),
            Node::Cache {
                parent: 0,
                id: 1,
                level: crate::plan::StorageLevel::MemoryOnly,
                write: Op::bare(2),
                read: Op::bare(3),
            },
        ],
        action: Action::Count,
    };
    build_dag(&plan, &|_| 2, None, &Default::default()).unwrap()
}

#[test]
fn kept_partitions_skip_their_stage_and_a_lost_one_is_recomputed_from_lineage() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 2, 0);
    s.executor_added(E2, 2, 0);
    let dag = cached_dag();
    assert_eq!(dag.stages.len(), 2);
    // An earlier job of the application kept both partitions.
    s.cached.record(
        APP,
        1,
        2,
        0,
        MapStatus {
            executor: E1,
            sizes: vec![7, 0],
        },
    );
    s.cached.record(
        APP,
        1,
        2,
        1,
        MapStatus {
            executor: E2,
            sizes: vec![0, 9],
        },
    );
    s.submit_job(J, APP, dag, JobPolicy::default());
    let l = launched(&mut s);
    // Only the reading stage runs, each task where its partition is kept.
    assert_eq!(l.len(), 2, "{l:?}");
    for (a, e, inputs) in &l {
        assert_eq!(a.task.stage.index, 1);
        assert_eq!(inputs.len(), 1);
        assert_eq!(*e, inputs[0].executor, "process-local");
    }
    // E2 dies with its partition: the cache stage recomputes it from the source.
    s.executor_disconnected(E2);
    let again = launched(&mut s);
    assert!(
        again
            .iter()
            .any(|(a, e, _)| a.task.stage.index == 0 && a.task.partition == 1 && *e == E1),
        "{again:?}"
    );
}

#[test]
fn silent_executor_is_removed_after_the_timeout() {
    let mut s = Scheduler::new(SchedulerConf {
        executor_timeout_ms: 1000,
        fair: true,
    });
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.heartbeat(E2, 900);
    s.tick(1000);
    assert!(drain(&mut s).is_empty());
    s.tick(1001);
    assert_eq!(
        drain(&mut s),
        vec![Command::RemoveExecutor {
            executor: E1,
            reason: ExecutorRemoval::Lost { silent_ms: 1001 }
        }]
    );
    assert_eq!(s.executors().len(), 1);
}

#[test]
fn an_executor_that_announced_its_leaving_is_decommissioned_not_disconnected() {
    let mut s = Scheduler::new(Default::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.executor_decommissioning(E1);
    s.executor_disconnected(E1);
    s.executor_disconnected(E2);
    s.executor_unreachable(E2, "ignored: already gone");
    let removals: Vec<_> = drain(&mut s)
        .into_iter()
        .filter_map(|c| match c {
            Command::RemoveExecutor { executor, reason } => Some((executor, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        removals,
        vec![
            (E1, ExecutorRemoval::Decommissioned),
            (E2, ExecutorRemoval::Disconnected)
        ]
    );
    assert_eq!(
        ExecutorRemoval::Lost { silent_ms: 1500 }.to_string(),
        "lost: no heartbeat for 1.5s"
    );
}

#[test]
fn a_status_counts_only_from_the_executor_its_attempt_runs_on() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(2, 1));
    let l = launched(&mut s);
    let (a, e, _) = l[0].clone();
    let other = if e == E1 { E2 } else { E1 };
    assert!(s.accepts_status(a, e));
    assert!(!s.accepts_status(a, other), "another executor's attempt");
    let never = TaskAttemptId {
        task: TaskId {
            stage: StageId { job: J, index: 9 },
            partition: u32::MAX,
        },
        attempt: 0,
    };
    assert!(!s.accepts_status(never, e), "an attempt that never existed");
    assert!(!s.accepts_status(a, ExecutorId(99)), "an unknown executor");
    s.task_succeeded(a, e, Some(vec![1]));
    assert!(!s.accepts_status(a, e), "an attempt that ended");
}

#[test]
fn map_output_that_does_not_fit_its_stage_fails_the_attempt() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    s.submit_job_default(J, two_stage_dag(1, 2));
    let (a, e, _) = launched(&mut s)[0].clone();
    s.task_succeeded(a, e, Some(vec![1, 2, 3, 4, 5]));
    let cmds = drain(&mut s);
    assert!(!cmds.contains(&Command::CommitTask { attempt: a }));
    let l = launches(&s, &cmds);
    assert_eq!(l.len(), 1, "retried: {cmds:?}");
    assert_eq!(l[0].0.task, a.task);
    assert_ne!(l[0].1, e);
    s.task_succeeded(l[0].0, l[0].1, None);
    assert!(launched(&mut s).iter().all(|x| x.0.task == a.task));
}

#[test]
fn an_attempt_that_never_reports_is_given_up_and_run_elsewhere() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    s.executor_added(E2, 1, 0);
    let policy = JobPolicy {
        attempt_timeout_ms: Some(1000),
        ..Default::default()
    };
    s.submit_job(J, APP, two_stage_dag(1, 1), policy);
    let (a, e, _) = launched(&mut s)[0].clone();
    s.heartbeat(E1, 1500);
    s.heartbeat(E2, 1500);
    s.tick(1500);
    let cmds = drain(&mut s);
    assert!(cmds.contains(&Command::KillTask {
        attempt: a,
        executor: e
    }));
    let l = launches(&s, &cmds);
    assert_eq!(l.len(), 1, "{cmds:?}");
    assert_eq!((l[0].0.task, l[0].0.attempt), (a.task, 1));
    assert_ne!(l[0].1, e);
    assert!(!s.accepts_status(a, e), "its late status is ignored");
}

#[test]
fn evicted_and_unpersisted_partitions_are_no_longer_kept() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 2, 0);
    s.submit_job_default(J, cached_dag());
    for (a, e, _) in launched(&mut s) {
        s.task_succeeded(a, e, Some(vec![1, 1]));
    }
    assert_eq!(s.cached_partitions().count(APP), 2);
    s.cached_dropped(E2, APP, 1, &[0]);
    assert_eq!(s.cached_partitions().count(APP), 2, "not E2's to drop");
    s.cached_dropped(E1, APP, 1, &[0, 7, u32::MAX]);
    assert_eq!(s.cached_partitions().count(APP), 1);
    s.unpersist(APP, 1);
    assert_eq!(s.cached_partitions().count(APP), 0);
}

#[test]
fn a_fetch_failure_unregisters_only_its_job_s_outputs_and_only_for_outputs_it_reads() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 2, 0);
    s.executor_added(E2, 2, 0);
    let other = JobId(2);
    s.submit_job_default(J, two_stage_dag(2, 1));
    s.submit_job_default(other, two_stage_dag(2, 1));
    for (a, e, _) in launched(&mut s) {
        s.task_succeeded(a, e, Some(vec![8]));
    }
    let reduces = launched(&mut s);
    let (r, re, _) = reduces
        .iter()
        .find(|l| l.0.task.stage.job == J)
        .unwrap()
        .clone();
    let held = |s: &Scheduler, job: JobId| {
        s.map_outputs()
            .statuses(job, ShuffleId(0))
            .unwrap()
            .iter()
            .flatten()
            .count()
    };
    // A claim about a map output the task does not read: its own failure, nothing lost.
    s.task_fetch_failed(r, re, E1, 7, vec!["bogus".into()]);
    let cmds = drain(&mut s);
    assert_eq!((held(&s, J), held(&s, other)), (2, 2), "{cmds:?}");
    let (r, re, _) = launches(&s, &cmds)[0].clone();
    // A real one: only job J's outputs on E1 go; the other job keeps its own.
    s.task_fetch_failed(r, re, E1, 0, vec!["gone".into()]);
    drain(&mut s);
    assert!(held(&s, J) < 2);
    assert_eq!(held(&s, other), 2, "another job's outputs are not touched");
}

/// A join of a large side (4 splits, 90 MiB) with a small one (1 split, 1 MiB), then a
/// count; either side may be broadcast.
fn join_dag(threshold: u64) -> JobDag {
    use crate::dag::{DagInputs, build_dag_with};
    use crate::plan::JoinProbe;
    let join = Node::Shuffle {
        sides: vec![
            ShuffleSide {
                parent: 0,
                write: Op::bare(2),
                keep: None,
            },
            ShuffleSide {
                parent: 1,
                write: Op::bare(2),
                keep: None,
            },
        ],
        partitions: Some(3),
        read: Op::bare(3),
        name: "join".into(),
        probes: vec![
            JoinProbe {
                stream: 0,
                probe: Op::bare(20),
            },
            JoinProbe {
                stream: 1,
                probe: Op::bare(21),
            },
        ],
    };
    let plan = LogicalPlan {
        nodes: vec![text_node(), text_node(), join],
        action: Action::Count,
    };
    let splits = |n: usize| if n == 0 { 4 } else { 1 };
    let bytes = |n: usize| Some(if n == 0 { 90 << 20 } else { 1 << 20 });
    build_dag_with(
        &plan,
        &DagInputs {
            source_partitions: &splits,
            source_bytes: &bytes,
            default_shuffle_partitions: None,
            broadcast_threshold: threshold,
        },
        &Default::default(),
    )
    .unwrap()
}

fn join_policy(threshold: u64) -> JobPolicy {
    JobPolicy {
        broadcast_threshold: threshold,
        ..JobPolicy::default()
    }
}

#[test]
fn a_small_join_side_is_broadcast_and_the_large_side_is_never_shuffled() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 4, 0);
    s.submit_job(J, APP, join_dag(10 << 20), join_policy(10 << 20));
    let first = launched(&mut s);
    // Only the small side runs: the large one waits for it.
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0.task.stage.index, 1);
    s.task_succeeded(first[0].0, E1, Some(vec![300, 200, 100]));
    let cmds = drain(&mut s);
    let replanned = cmds
        .iter()
        .find_map(|c| match c {
            Command::Replanned { dag, changes, .. } => Some((dag.clone(), changes.clone())),
            _ => None,
        })
        .expect("re-planned once the small side is known");
    assert!(changes_say(&replanned.1, "600 bytes"));
    assert_eq!(
        replanned.0.stages[0].partitions, 0,
        "the large side is absorbed"
    );
    // The join stage runs the large side's 4 splits, each with the whole build side.
    let joins = launches(&s, &cmds);
    assert_eq!(joins.len(), 4);
    for (attempt, _, inputs) in &joins {
        assert_eq!(attempt.task.stage.index, 2);
        let mut reduces: Vec<u32> = inputs.iter().map(|l| l.reduce).collect();
        reduces.sort_unstable();
        assert_eq!(reduces, vec![0, 1, 2], "every partition of the build side");
        assert!(inputs.iter().all(|l| l.shuffle == ShuffleId(1)));
    }
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::StageStarted { stage, .. } if stage.index == 0)),
        "the absorbed stage never starts: {cmds:?}"
    );
    for (attempt, e, _) in joins {
        s.task_succeeded(attempt, e, None);
    }
    assert!(drain(&mut s).contains(&Command::JobSucceeded { job: J }));
}

fn changes_say(changes: &[String], what: &str) -> bool {
    changes.iter().any(|c| c.contains(what))
}

#[test]
fn a_join_side_over_the_threshold_is_shuffled_after_all() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 4, 0);
    s.submit_job(J, APP, join_dag(10 << 20), join_policy(10 << 20));
    let first = launched(&mut s);
    assert_eq!(first.len(), 1, "the small side first");
    // Its output is larger than its input promised.
    s.task_succeeded(first[0].0, E1, Some(vec![8 << 20, 8 << 20, 0]));
    let cmds = drain(&mut s);
    assert!(!cmds.iter().any(|c| matches!(c, Command::Replanned { .. })));
    let maps = launches(&s, &cmds);
    assert_eq!(maps.len(), 4, "the large side's map stage runs as usual");
    assert!(maps.iter().all(|(a, _, _)| a.task.stage.index == 0));
    for (attempt, e, _) in maps {
        s.task_succeeded(attempt, e, Some(vec![1, 1, 1]));
    }
    let reduces = launched(&mut s);
    assert_eq!(reduces.len(), 3, "a shuffled join of 3 partitions");
}

#[test]
fn a_lost_build_side_is_recomputed_and_the_broadcast_join_resumes() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 4, 0);
    s.executor_added(E2, 4, 0);
    s.submit_job(J, APP, join_dag(10 << 20), join_policy(10 << 20));
    let first = launched(&mut s);
    let (build, at, _) = first[0].clone();
    s.task_succeeded(build, at, Some(vec![10, 10, 10]));
    let joins = launched(&mut s);
    assert_eq!(joins.len(), 4);
    // A join task cannot fetch the build side: its map output is rerun.
    let (a, e, _) = joins[0].clone();
    s.task_fetch_failed(a, e, at, 0, vec!["gone".into()]);
    let cmds = drain(&mut s);
    let rerun = launches(&s, &cmds);
    assert!(
        rerun.iter().any(|(x, _, _)| x.task.stage.index == 1),
        "the build side runs again: {cmds:?}"
    );
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Replanned { .. })),
        "no second re-plan"
    );
}

#[test]
fn without_adaptive_execution_a_join_is_shuffled_and_nothing_waits() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 8, 0);
    s.submit_job(J, APP, join_dag(0), join_policy(0));
    let maps = launched(&mut s);
    assert_eq!(maps.len(), 5, "both sides' map tasks at once");
}

#[test]
fn small_shuffle_partitions_are_read_together_once_the_map_side_is_done() {
    let mut s = Scheduler::new(SchedulerConf::default());
    s.executor_added(E1, 1, 0);
    // The target is the smaller of the bytes per slot and `coalesce_target`: here the
    // latter, with room for the rounding of segment sizes (within 10%).
    let policy = JobPolicy {
        coalesce_target: 14 << 20,
        ..JobPolicy::default()
    };
    let plan = LogicalPlan {
        nodes: vec![
            text_node(),
            Node::Shuffle {
                sides: vec![ShuffleSide {
                    parent: 0,
                    write: Op::bare(2),
                    keep: None,
                }],
                partitions: None,
                read: Op::bare(3),
                name: "reduce_by_key".into(),
                probes: vec![],
            },
        ],
        action: Action::Count,
    };
    let dag = build_dag(&plan, &|_| 2, Some(8), &Default::default()).unwrap();
    s.submit_job(J, APP, dag, policy);
    // 8 partitions of a few MiB each, 24 MiB in all: two tasks of 12 MiB.
    let mib = 1u64 << 20;
    let mut cmds = drain(&mut s);
    for _ in 0..2 {
        let maps = launches(&s, &cmds);
        assert_eq!(maps.len(), 1, "one slot");
        let (a, e, _) = maps[0];
        s.task_succeeded(
            a,
            e,
            Some(vec![mib, mib, 2 * mib, mib, mib, 3 * mib, mib, 2 * mib]),
        );
        cmds = drain(&mut s);
    }
    let change = cmds
        .iter()
        .find_map(|c| match c {
            Command::Replanned { changes, dag, .. } => Some((changes.clone(), dag.clone())),
            _ => None,
        })
        .expect("coalesced");
    assert!(
        changes_say(&change.0, "8 shuffle partitions"),
        "{:?}",
        change.0
    );
    assert_eq!(change.1.stages[1].partitions, 2);
    let mut all = Vec::new();
    let mut reduces = launches(&s, &cmds);
    for _ in 0..2 {
        assert_eq!(reduces.len(), 1, "one slot");
        let (a, e, inputs) = reduces.pop().unwrap();
        all.extend(inputs.iter().map(|l| l.reduce));
        s.task_succeeded(a, e, None);
        cmds = drain(&mut s);
        reduces = launches(&s, &cmds);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (0..8).collect::<Vec<_>>(), "every partition read once");
    assert!(cmds.contains(&Command::JobSucceeded { job: J }));
}
