//! What `flint run` and `flint submit` show while a job runs: a progress bar per stage on
//! a terminal, plain log lines otherwise.

use flint_protocol::ids::StageId;
use flint_protocol::wire::SubmitEvent;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    bars: Option<(MultiProgress, HashMap<StageId, ProgressBar>)>,
    started: HashMap<StageId, Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            bars: std::io::stderr()
                .is_terminal()
                .then(|| (MultiProgress::new(), HashMap::new())),
            started: HashMap::new(),
        }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    pub fn on(&mut self, ev: &SubmitEvent) {
        match ev {
            SubmitEvent::JobStarted {
                job,
                action,
                stages,
                stage_tasks,
            } => {
                self.line(format!(
                    "flint: {job} ({action}) started, {} stage(s):",
                    stages.len()
                ));
                for (i, s) in stages.iter().enumerate() {
                    self.line(format!("flint:   stage {i}: {s}"));
                }
                let style = ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30.cyan/blue}] {pos}/{len} tasks {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                for (i, n) in stage_tasks.iter().enumerate() {
                    let id = StageId {
                        job: *job,
                        index: i as u32,
                    };
                    self.started.insert(id, Instant::now());
                    if let Some((multi, bars)) = &mut self.bars {
                        let bar = multi.add(ProgressBar::new(*n as u64));
                        bar.set_style(style.clone());
                        bar.set_prefix(format!("stage {}.{i}", job.0));
                        bar.enable_steady_tick(std::time::Duration::from_millis(200));
                        bars.insert(id, bar);
                    }
                }
            }
            SubmitEvent::Replanned {
                job,
                stages,
                stage_tasks,
                changes,
            } => {
                for c in changes {
                    self.line(format!("flint: adaptive execution: {c}"));
                }
                for (i, (s, n)) in stages.iter().zip(stage_tasks).enumerate() {
                    self.line(format!("flint:   stage {i}: {n} task(s): {s}"));
                    let id = StageId {
                        job: *job,
                        index: i as u32,
                    };
                    if let Some((_, bars)) = &self.bars
                        && let Some(bar) = bars.get(&id)
                    {
                        bar.set_length(*n as u64);
                    }
                }
            }
            SubmitEvent::StageProgress { stage, done, total } => {
                if let Some((_, bars)) = &self.bars {
                    if let Some(bar) = bars.get(stage) {
                        bar.set_position(*done as u64);
                        if done == total {
                            bar.finish();
                        }
                    }
                } else if done == total {
                    let secs = self
                        .started
                        .get(stage)
                        .map(|t| t.elapsed().as_secs_f64())
                        .unwrap_or(0.0);
                    eprintln!("flint: {stage} done: {total} task(s) in {secs:.2}s");
                }
            }
            SubmitEvent::JobEnded { job, ok, ms } => {
                if let Some((_, bars)) = &mut self.bars {
                    bars.retain(|id, bar| {
                        if id.job == *job {
                            bar.abandon();
                            false
                        } else {
                            true
                        }
                    });
                }
                self.line(format!(
                    "flint: {job} {} in {:.2}s",
                    if *ok { "succeeded" } else { "failed" },
                    *ms as f64 / 1000.0
                ));
            }
            SubmitEvent::Finished(_) | SubmitEvent::Accepted { .. } => {}
        }
    }
}
