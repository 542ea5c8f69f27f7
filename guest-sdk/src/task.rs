//! The executor side: one stage's fused pipeline over one partition, batch by batch.
//!
//! The host calls `start` once, then per piece `push` per input batch and `end-piece`,
//! then `finish`, all on one instance; the state between calls lives here. Output leaves
//! through `task-host.emit` as it is made (see [`crate::spill`]).

use crate::__private::{ErrorChain, TaskSpec};
use crate::bindings::exports::flint::job::task::{PieceInput, TaskOutput};
use crate::bindings::flint::job::types::Op;
use crate::rows::{self, Rows, fn_ptr};
use crate::spill::{emit_batch, emit_raw};
use crate::{Error, Result};
use arrow_array::RecordBatch;
use std::cell::RefCell;

/// A narrow transformation over a stream of row batches; may keep state across batches
/// and emit more rows when its partition ends. An op whose output of one batch can be
/// large (`flat_map`) or that hands on a whole partition (`map_partitions`) returns it a
/// batch at a time: the first from `push`, the rest from `next`.
pub(crate) trait Operator {
    /// Maps a batch: the first part of its output.
    fn push(&mut self, rows: Rows) -> Result<Rows>;
    /// The partition has ended; what the op held comes from `next`.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// More output of the last `push` or of `finish`, a batch at a time, until `None`.
    fn next(&mut self) -> Result<Option<Rows>> {
        Ok(None)
    }
}

/// Where a chain of ops hands its output.
type Sink<'a> = dyn FnMut(Rows) -> Result<()> + 'a;

/// Runs `rows` through `ops` into `sink`, then every further batch an op has (see
/// [`Operator::next`]) through the ops after it, until none has more. Iterative: the
/// depth is the chain's length, not the call stack's.
fn drive(ops: &mut [Box<dyn Operator>], rows: Rows, sink: &mut Sink<'_>) -> Result<()> {
    let mut pending: Vec<usize> = Vec::new();
    let mut next = Some((0, rows));
    while let Some((from, mut rows)) = next.take() {
        for (i, op) in ops.iter_mut().enumerate().skip(from) {
            if rows.len == 0 {
                break;
            }
            rows = op.push(rows)?;
            pending.push(i);
        }
        if rows.len > 0 {
            sink(rows)?;
        }
        while let Some(&i) = pending.last() {
            if let Some(more) = ops[i].next()? {
                next = Some((i + 1, more));
                break;
            }
            pending.pop();
        }
    }
    Ok(())
}

/// Ends the partition for each op in turn, running what it held through the ops after it.
fn finish_ops(ops: &mut [Box<dyn Operator>], sink: &mut Sink<'_>) -> Result<()> {
    for i in 0..ops.len() {
        let (head, tail) = ops.split_at_mut(i + 1);
        head[i].finish()?;
        while let Some(rows) = head[i].next()? {
            drive(tail, rows, sink)?;
        }
    }
    Ok(())
}

/// Map side of a shuffle: takes rows, emits per-partition batches as its buffers fill
/// (or its memory budget is reached) and what is left at the end.
pub(crate) trait ShuffleWriter {
    fn push(&mut self, rows: Rows) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Reduce side of a shuffle: takes fetched batches of each side; emits rows as it goes
/// (a pass-through) or at the end (a merge).
pub(crate) trait ShuffleReader {
    fn push(&mut self, side: u32, batch: &RecordBatch) -> Result<Option<Rows>>;
    /// Hands on what the reduce side held, batch by batch, through `emit`.
    fn finish(self: Box<Self>, emit: &mut crate::ops::Emit<'_>) -> Result<()>;
}

pub(crate) type DecodeFn = fn(&[u8], &RecordBatch) -> Result<Rows>;
pub(crate) type NewOpFn = fn(&[u8]) -> Result<Box<dyn Operator>>;
pub(crate) type ToBatchFn = fn(&[u8], Rows) -> Result<RecordBatch>;
pub(crate) type NewWriterFn = fn(&[u8], u32) -> Result<Box<dyn ShuffleWriter>>;
pub(crate) type NewReaderFn = fn(&[u8]) -> Result<Box<dyn ShuffleReader>>;

enum Input {
    Batches(DecodeFn, Vec<u8>),
    Shuffle(Option<Box<dyn ShuffleReader>>),
}

struct Piece {
    input: Input,
    ops: Vec<Box<dyn Operator>>,
}

enum Output {
    Shuffle(Box<dyn ShuffleWriter>),
    Batches(ToBatchFn, Vec<u8>),
    Count,
}

struct Task {
    pieces: Vec<Piece>,
    ops: Vec<Box<dyn Operator>>,
    output: Output,
}

thread_local! {
    static TASK: RefCell<Option<Task>> = const { RefCell::new(None) };
    static CONTEXT: std::cell::Cell<Option<TaskContext>> = const { std::cell::Cell::new(None) };
}

/// Where the current task runs: Spark's `TaskContext`.
///
/// ```no_run
/// # fn f(xs: flint::Dataset<u64>) {
/// // Tag each row with the partition that produced it.
/// let tagged = xs.map(|x: u64| (flint::task_context().map_or(0, |t| t.partition), x));
/// # }
/// ```
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
fn cast_new_op(r: u32) -> Result<NewOpFn> {
    Ok(unsafe { std::mem::transmute::<usize, NewOpFn>(fn_ptr(r)?) })
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

fn new_ops(ops: &[Op]) -> Result<Vec<Box<dyn Operator>>> {
    ops.iter()
        .map(|o| cast_new_op(o.function)?(&o.arg))
        .collect()
}

pub fn start(spec: TaskSpec) -> Result<(), ErrorChain> {
    crate::shared::reset_partials();
    crate::spill::set_budget(spec.memory_budget);
    CONTEXT.with(|c| {
        c.set(Some(TaskContext {
            partition: spec.partition,
            attempt: spec.attempt,
            executor: spec.executor,
        }))
    });
    let task = (|| -> Result<Task> {
        let mut pieces = Vec::with_capacity(spec.pieces.len());
        for p in &spec.pieces {
            let input = match &p.input {
                PieceInput::Batches(o) => Input::Batches(cast_decode(o.function)?, o.arg.clone()),
                PieceInput::Shuffle(o) => {
                    Input::Shuffle(Some(cast_new_reader(o.function)?(&o.arg)?))
                }
            };
            pieces.push(Piece {
                input,
                ops: new_ops(&p.ops)?,
            });
        }
        let output = match spec.output {
            TaskOutput::Shuffle(w) => Output::Shuffle(cast_new_writer(w.write.function)?(
                &w.write.arg,
                w.partitions,
            )?),
            TaskOutput::Render(o) | TaskOutput::Rows(o) => {
                Output::Batches(cast_to_batch(o.function)?, o.arg)
            }
            TaskOutput::Count => Output::Count,
        };
        Ok(Task {
            pieces,
            ops: new_ops(&spec.ops)?,
            output,
        })
    })()
    .map_err(Error::into_chain)?;
    TASK.with(|t| *t.borrow_mut() = Some(task));
    Ok(())
}

pub fn push(piece: u32, side: u32, batch: Vec<u8>) -> Result<(), ErrorChain> {
    with_task(|task| {
        let (p, mut tail) = task.split(piece)?;
        let batches = match p.input {
            Input::Batches(..) => rows::read_host_ipc(batch)?,
            Input::Shuffle(_) => rows::read_ipc(batch)?,
        };
        for b in batches {
            let rows = match &mut p.input {
                Input::Batches(decode, arg) => Some(decode(arg, &b)?),
                Input::Shuffle(Some(reader)) => reader.push(side, &b)?,
                Input::Shuffle(None) => return Err(Error::msg("push after end-piece")),
            };
            if let Some(rows) = rows {
                drive(&mut p.ops, rows, &mut |r| tail.run(r))?;
            }
        }
        Ok(())
    })
}

pub fn end_piece(piece: u32) -> Result<(), ErrorChain> {
    with_task(|task| {
        let (p, mut tail) = task.split(piece)?;
        if let Input::Shuffle(reader) = &mut p.input
            && let Some(reader) = reader.take()
        {
            let piece_ops = &mut p.ops;
            reader.finish(&mut |rows| drive(piece_ops, rows, &mut |r| tail.run(r)))?;
        }
        // Partition-wise ops of the piece emit what they held.
        finish_ops(&mut p.ops, &mut |r| tail.run(r))
    })
}

pub fn finish() -> Result<(), ErrorChain> {
    let task = TASK.with(|t| t.borrow_mut().take());
    let mut task = task.ok_or_else(|| Error::msg("finish called before start").into_chain())?;
    (|| -> Result<()> {
        let output = &mut task.output;
        finish_ops(&mut task.ops, &mut |r| output.emit(r))?;
        match task.output {
            Output::Shuffle(writer) => writer.finish(),
            Output::Batches(..) | Output::Count => Ok(()),
        }
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

/// The task's ops and output: where a piece's rows go on to.
struct Tail<'a> {
    ops: &'a mut [Box<dyn Operator>],
    output: &'a mut Output,
}

impl Tail<'_> {
    fn run(&mut self, rows: Rows) -> Result<()> {
        let output = &mut *self.output;
        drive(self.ops, rows, &mut |r| output.emit(r))
    }
}

impl Task {
    /// Piece `i`, and where its rows go on to.
    fn split(&mut self, i: u32) -> Result<(&mut Piece, Tail<'_>)> {
        let n = self.pieces.len();
        let piece = self
            .pieces
            .get_mut(i as usize)
            .ok_or_else(|| Error::msg(format!("piece {i} of a task with {n}")))?;
        let tail = Tail {
            ops: &mut self.ops,
            output: &mut self.output,
        };
        Ok((piece, tail))
    }
}

impl Output {
    fn emit(&mut self, rows: Rows) -> Result<()> {
        if rows.len == 0 {
            return Ok(());
        }
        match self {
            Output::Shuffle(w) => w.push(rows)?,
            Output::Batches(to_batch, arg) => emit_batch(0, &to_batch(arg, rows)?)?,
            Output::Count => emit_raw(0, &[], rows.len as u64)?,
        }
        Ok(())
    }
}
