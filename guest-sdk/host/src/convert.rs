//! Where the WIT world's types meet the protocol's: plans a driver program sends, the
//! task spec a task starts with, and the kinds of errors the host reports. Nothing else
//! in Flint sees a WIT type.

use crate::bindings::exports::flint::job::task as wit_task;
use crate::program::{ActionError, ActionResult};
use crate::wit;
use flint_protocol::plan::{
    Action, Codec, ColumnPredicate, CompareOp, CsvFormat, DateFormat, FnRef, JoinProbe, Literal,
    LogicalPlan, Malformed, Node, Op, ReadFormat, SaveMode, SaveOptions, ShuffleSide, StorageLevel,
    WriteFormat,
};
use flint_protocol::wire::{AppErrorKind, TaskDescriptor, TaskInput, TaskOutput};

fn op(o: wit::Op) -> Op {
    Op {
        func: FnRef(o.function),
        arg: o.arg.into(),
    }
}

fn wit_op(o: &Op) -> wit::Op {
    wit::Op {
        function: o.func.0,
        arg: o.arg.to_vec(),
    }
}

fn predicate(p: wit::ColumnPredicate) -> ColumnPredicate {
    ColumnPredicate {
        column: p.column,
        op: match p.op {
            wit::CompareOp::Eq => CompareOp::Eq,
            wit::CompareOp::NotEq => CompareOp::NotEq,
            wit::CompareOp::Lt => CompareOp::Lt,
            wit::CompareOp::LtEq => CompareOp::LtEq,
            wit::CompareOp::Gt => CompareOp::Gt,
            wit::CompareOp::GtEq => CompareOp::GtEq,
            wit::CompareOp::IsNull => CompareOp::IsNull,
            wit::CompareOp::IsNotNull => CompareOp::IsNotNull,
        },
        value: match p.value {
            wit::Literal::Null => Literal::Null,
            wit::Literal::Boolean(b) => Literal::Bool(b),
            wit::Literal::Int(i) => Literal::Int(i),
            wit::Literal::Float(x) => Literal::Float(x),
            wit::Literal::Text(t) => Literal::Text(t),
        },
    }
}

/// The plan as the driver program sent it, in the protocol's terms. Its structure is not
/// checked here: [`LogicalPlan::validate`] does that, with the application's limits.
pub fn plan_from_wit(plan: wit::Plan, action: wit::Action) -> LogicalPlan {
    let nodes = plan
        .nodes
        .into_iter()
        .map(|n| match n {
            wit::PlanNode::Files(f) => Node::Files {
                paths: f.paths,
                format: match f.format {
                    wit::ReadFormat::Text => ReadFormat::Text,
                    wit::ReadFormat::Csv(c) => ReadFormat::Csv(CsvFormat {
                        header: c.header,
                        delimiter: c.delimiter,
                        quote: c.quote,
                        escape: c.escape,
                        comment: c.comment,
                        null_values: c.null_values,
                        multi_line: c.multi_line,
                        date_formats: c
                            .date_formats
                            .into_iter()
                            .map(|(column, format)| DateFormat { column, format })
                            .collect(),
                        inferred: c.schema.is_none(),
                        schema: c.schema,
                    }),
                    wit::ReadFormat::JsonLines(schema) => ReadFormat::JsonLines { schema },
                    wit::ReadFormat::Parquet(columns) => ReadFormat::Parquet { columns },
                    wit::ReadFormat::ArrowIpc => ReadFormat::ArrowIpc,
                },
                min_partitions: f.min_partitions,
                malformed: match f.malformed {
                    wit::Malformed::Fail => Malformed::Fail,
                    wit::Malformed::Drop => Malformed::Drop,
                },
                filter: f.filter.into_iter().map(predicate).collect(),
                decode: op(f.decode),
            },
            wit::PlanNode::Inline(i) => Node::Inline {
                partitions: i.partitions,
                decode: op(i.decode),
            },
            wit::PlanNode::Narrow(n) => Node::Narrow {
                parent: n.parent as usize,
                apply: op(n.apply),
                name: n.name,
            },
            wit::PlanNode::Shuffle(s) => Node::Shuffle {
                sides: s
                    .sides
                    .into_iter()
                    .map(|side| ShuffleSide {
                        parent: side.parent as usize,
                        write: op(side.write),
                        keep: side.keep,
                    })
                    .collect(),
                partitions: s.partitions,
                read: op(s.read),
                name: s.name,
                probes: s
                    .probes
                    .into_iter()
                    .map(|p| JoinProbe {
                        stream: p.streamed,
                        probe: op(p.probe),
                    })
                    .collect(),
            },
            wit::PlanNode::Union(parents) => Node::Union {
                parents: parents.into_iter().map(|p| p as usize).collect(),
            },
            wit::PlanNode::Coalesce(c) => Node::Coalesce {
                parent: c.parent as usize,
                partitions: c.partitions,
            },
            wit::PlanNode::Cache(c) => Node::Cache {
                parent: c.parent as usize,
                id: c.id,
                level: match c.level {
                    wit::StorageLevel::MemoryOnly => StorageLevel::MemoryOnly,
                    wit::StorageLevel::MemoryAndDisk => StorageLevel::MemoryAndDisk,
                    wit::StorageLevel::DiskOnly => StorageLevel::DiskOnly,
                },
                write: op(c.write),
                read: op(c.read),
            },
        })
        .collect();
    let action = match action {
        wit::Action::Collect(c) => Action::Collect {
            encode: op(c.encode),
            limit: c.limit,
        },
        wit::Action::Count => Action::Count,
        wit::Action::Save(s) => Action::Save {
            path: s.path,
            format: match s.format {
                wit::WriteFormat::Text => WriteFormat::Text,
                wit::WriteFormat::Csv => WriteFormat::Csv,
                wit::WriteFormat::JsonLines => WriteFormat::JsonLines,
                wit::WriteFormat::Parquet => WriteFormat::Parquet,
                wit::WriteFormat::ArrowIpc => WriteFormat::ArrowIpc,
            },
            render: op(s.render),
            options: SaveOptions {
                mode: match s.mode {
                    wit::SaveMode::ErrorIfExists => SaveMode::ErrorIfExists,
                    wit::SaveMode::Overwrite => SaveMode::Overwrite,
                    wit::SaveMode::Append => SaveMode::Append,
                    wit::SaveMode::Ignore => SaveMode::Ignore,
                },
                compression: s.compression.map(|c| match c {
                    wit::Codec::Uncompressed => Codec::Uncompressed,
                    wit::Codec::Snappy => Codec::Snappy,
                    wit::Codec::Gzip => Codec::Gzip,
                    wit::Codec::Zstd => Codec::Zstd,
                    wit::Codec::Lz4 => Codec::Lz4,
                    wit::Codec::Brotli => Codec::Brotli,
                    wit::Codec::Bzip2 => Codec::Bzip2,
                }),
                partition_by: s.partition_by,
            },
        },
    };
    LogicalPlan { nodes, action }
}

/// The guest's view of the task `desc` describes, on executor `executor`.
pub(crate) fn task_spec(
    desc: &TaskDescriptor,
    executor: u32,
    memory_budget: u64,
) -> wit_task::TaskSpec {
    wit_task::TaskSpec {
        pieces: desc
            .pieces
            .iter()
            .map(|p| wit_task::Piece {
                input: match &p.input {
                    TaskInput::Split { decode, .. } | TaskInput::Inline { decode, .. } => {
                        wit_task::PieceInput::Batches(wit_op(decode))
                    }
                    TaskInput::Shuffle { read, .. } => wit_task::PieceInput::Shuffle(wit_op(read)),
                },
                ops: p.ops.iter().map(wit_op).collect(),
            })
            .collect(),
        ops: desc.ops.iter().map(wit_op).collect(),
        output: match &desc.output {
            TaskOutput::ShuffleWrite {
                write, partitions, ..
            } => wit_task::TaskOutput::Shuffle(wit_task::ShuffleWrite {
                write: wit_op(write),
                partitions: *partitions,
            }),
            TaskOutput::File { render, .. } => wit_task::TaskOutput::Render(wit_op(render)),
            TaskOutput::Rows { encode } => wit_task::TaskOutput::Rows(wit_op(encode)),
            TaskOutput::Count => wit_task::TaskOutput::Count,
        },
        partition: desc.attempt.task.partition,
        attempt: desc.attempt.attempt,
        executor,
        memory_budget,
    }
}

pub(crate) fn result_to_wit(r: ActionResult) -> wit::ActionResult {
    match r {
        ActionResult::Rows(rows) => wit::ActionResult::Rows(rows),
        ActionResult::Count(n) => wit::ActionResult::Count(n),
        ActionResult::Saved => wit::ActionResult::Saved,
    }
}

pub(crate) fn error_to_wit(e: ActionError) -> wit::ErrorChain {
    wit::ErrorChain {
        message: e.message,
        causes: e.causes,
        kind: kind_to_wit(&e.kind),
    }
}

/// The kinds an action can report; the others belong to submissions and programs.
fn kind_to_wit(k: &AppErrorKind) -> Option<wit::ErrorKind> {
    Some(match k {
        AppErrorKind::InvalidPlan => wit::ErrorKind::InvalidPlan,
        AppErrorKind::Limit { limit } => wit::ErrorKind::Limit(limit.clone()),
        AppErrorKind::Denied => wit::ErrorKind::Denied,
        AppErrorKind::Io => wit::ErrorKind::Io,
        AppErrorKind::TaskFailed => wit::ErrorKind::TaskFailed,
        AppErrorKind::Driver => wit::ErrorKind::Driver,
        AppErrorKind::BadInput => wit::ErrorKind::BadInput,
        AppErrorKind::Refused | AppErrorKind::BadComponent | AppErrorKind::Program => {
            return None;
        }
    })
}

pub(crate) fn kind_from_wit(k: wit::ErrorKind) -> AppErrorKind {
    match k {
        wit::ErrorKind::InvalidPlan => AppErrorKind::InvalidPlan,
        wit::ErrorKind::Limit(limit) => AppErrorKind::Limit { limit },
        wit::ErrorKind::Denied => AppErrorKind::Denied,
        wit::ErrorKind::Io => AppErrorKind::Io,
        wit::ErrorKind::TaskFailed => AppErrorKind::TaskFailed,
        wit::ErrorKind::Driver => AppErrorKind::Driver,
        wit::ErrorKind::BadInput => AppErrorKind::BadInput,
    }
}
