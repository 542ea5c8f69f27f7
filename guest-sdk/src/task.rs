//! The executor side: one stage's fused pipeline over one partition, batch by batch.
//!
//! The host calls `start` once, `push` per input batch, `finish` once, all on one instance;
//! the state between calls lives here.

use crate::__private::{Chunk, ErrorChain, TaskSpec};
use crate::bindings::exports::flint::job::task::{TaskInput, TaskOutput};
use crate::rows::{self, Rows, fn_ptr, ipc_bytes, ipc_stream};
use crate::{Error, Result};
use arrow_array::RecordBatch;
use std::cell::RefCell;

/// Map side of a shuffle: takes rows, returns per-partition batches at the end.
pub(crate) trait ShuffleWriter {
    fn push(&mut self, rows: Rows) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<Vec<(u32, Vec<RecordBatch>)>>;
}

/// Reduce side of a shuffle: takes fetched batches, returns merged rows at the end.
pub(crate) trait ShuffleReader {
    fn push(&mut self, batch: &RecordBatch) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<Vec<Rows>>;
}

type DecodeFn = fn(&RecordBatch) -> Result<Rows>;
type ApplyFn = fn(Rows) -> Result<Rows>;
type ToBatchFn = fn(Rows) -> Result<RecordBatch>;
type NewWriterFn = fn(u32) -> Box<dyn ShuffleWriter>;
type NewReaderFn = fn() -> Box<dyn ShuffleReader>;

enum Input {
    Batches(DecodeFn),
    Shuffle(Box<dyn ShuffleReader>),
}

enum Output {
    Shuffle(Box<dyn ShuffleWriter>),
    Batches(ToBatchFn),
    Count,
}

struct Task {
    input: Input,
    ops: Vec<ApplyFn>,
    output: Output,
}

thread_local! {
    static TASK: RefCell<Option<Task>> = const { RefCell::new(None) };
    static CONTEXT: std::cell::Cell<Option<TaskContext>> = const { std::cell::Cell::new(None) };
}

/// Where the current task runs: Spark's `TaskContext`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskContext {
    /// The partition the task computes.
    pub partition: u32,
    /// 0 for the first attempt, 1 for the first retry or speculative copy, and so on.
    pub attempt: u32,
    /// The executor running the task, as numbered by the driver (from 1).
    pub executor: u32,
}

/// The running task's context, or `None` outside a task (in `main`, on the driver).
///
/// ```
/// // In `main` there is no task.
/// assert_eq!(flint::task_context(), None);
/// ```
pub fn task_context() -> Option<TaskContext> {
    CONTEXT.with(|c| c.get())
}

// SAFETY (all `cast_*`): `r` came from `fn_ref` of a function of exactly this type in this
// same component: the driver-side instance named it, the host only carried it. A forged
// reference can at worst call another function of this component, inside the sandbox;
// call_indirect still checks the signature.
fn cast_decode(r: u32) -> Result<DecodeFn> {
    Ok(unsafe { std::mem::transmute::<usize, DecodeFn>(fn_ptr(r)?) })
}
fn cast_apply(r: u32) -> Result<ApplyFn> {
    Ok(unsafe { std::mem::transmute::<usize, ApplyFn>(fn_ptr(r)?) })
}
fn cast_to_batch(r: u32) -> Result<ToBatchFn> {
    Ok(unsafe { std::mem::transmute::<usize, ToBatchFn>(fn_ptr(r)?) })
}
fn cast_new_writer(r: u32) -> Result<NewWriterFn> {
    Ok(unsafe { std::mem::transmute::<usize, NewWriterFn>(fn_ptr(r)?) })
}
fn cast_new_reader(r: u32) -> Result<NewReaderFn> {
    Ok(unsafe { std::mem::transmute::<usize, NewReaderFn>(fn_ptr(r)?) })
}

pub fn start(spec: TaskSpec) -> Result<(), ErrorChain> {
    CONTEXT.with(|c| {
        c.set(Some(TaskContext {
            partition: spec.partition,
            attempt: spec.attempt,
            executor: spec.executor,
        }))
    });
    let task = (|| -> Result<Task> {
        let input = match spec.input {
            TaskInput::Batches(r) => Input::Batches(cast_decode(r)?),
            TaskInput::Shuffle(r) => Input::Shuffle(cast_new_reader(r)?()),
        };
        let ops = spec
            .ops
            .iter()
            .map(|r| cast_apply(*r))
            .collect::<Result<Vec<_>>>()?;
        let output = match spec.output {
            TaskOutput::Shuffle(w) => Output::Shuffle(cast_new_writer(w.write)?(w.partitions)),
            TaskOutput::Text(r) | TaskOutput::Rows(r) => Output::Batches(cast_to_batch(r)?),
            TaskOutput::Count => Output::Count,
        };
        Ok(Task { input, ops, output })
    })()
    .map_err(Error::into_chain)?;
    TASK.with(|t| *t.borrow_mut() = Some(task));
    Ok(())
}

pub fn push(batch: Vec<u8>) -> Result<Vec<Chunk>, ErrorChain> {
    with_task(|task| {
        let mut out = Vec::new();
        for b in rows::read_ipc(&batch)? {
            match &mut task.input {
                Input::Batches(decode) => {
                    let rows = decode(&b)?;
                    task.run(rows, &mut out)?;
                }
                Input::Shuffle(reader) => reader.push(&b)?,
            }
        }
        Ok(out)
    })
}

pub fn finish() -> Result<Vec<Chunk>, ErrorChain> {
    let task = TASK.with(|t| t.borrow_mut().take());
    let mut task = task.ok_or_else(|| Error::msg("finish called before start").into_chain())?;
    (|| -> Result<Vec<Chunk>> {
        let mut out = Vec::new();
        let input = std::mem::replace(
            &mut task.input,
            Input::Batches(|_| Err(Error::msg("input finished"))),
        );
        if let Input::Shuffle(reader) = input {
            for rows in reader.finish()? {
                task.run(rows, &mut out)?;
            }
        }
        match task.output {
            Output::Shuffle(writer) => {
                for (partition, batches) in writer.finish()? {
                    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                    out.push(Chunk {
                        partition,
                        ipc: ipc_stream(&batches)?,
                        rows,
                    });
                }
            }
            Output::Batches(_) | Output::Count => {}
        }
        Ok(out)
    })()
    .map_err(Error::into_chain)
}

fn with_task<R>(f: impl FnOnce(&mut Task) -> Result<R>) -> Result<R, ErrorChain> {
    TASK.with(|t| {
        let mut t = t.borrow_mut();
        let task = t
            .as_mut()
            .ok_or_else(|| Error::msg("push called before start").into_chain())?;
        f(task).map_err(Error::into_chain)
    })
}

impl Task {
    /// Runs the fused narrow ops over one batch of rows and hands the result to the output.
    fn run(&mut self, mut rows: Rows, out: &mut Vec<Chunk>) -> Result<()> {
        for op in &self.ops {
            rows = op(rows)?;
        }
        match &mut self.output {
            Output::Shuffle(w) => w.push(rows)?,
            Output::Batches(to_batch) => {
                let n = rows.len as u64;
                if n > 0 {
                    let b = to_batch(rows)?;
                    out.push(Chunk {
                        partition: 0,
                        ipc: ipc_bytes(&b)?,
                        rows: n,
                    });
                }
            }
            Output::Count => out.push(Chunk {
                partition: 0,
                ipc: Vec::new(),
                rows: rows.len as u64,
            }),
        }
        Ok(())
    }
}
