//! The logical plan: what a job's `main` asked for, before it is cut into stages.
//!
//! Functions are named by [`Op`]: an entry of the job component's own function table and
//! the bytes of the value it captured, produced by the guest SDK on the driver and only
//! ever handed back to an instance of the same component. The host never interprets one.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

/// A function inside the job component (its indirect-call table index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FnRef(pub u32);

/// A function of the job component and the value it captured (opaque bytes). The
/// bytes are shared: the DAG builder copies an op into every branch that applies it, and
/// a copy must not cost the size of what it captured.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Op {
    pub func: FnRef,
    pub arg: Arc<[u8]>,
}

impl Op {
    /// A function that captured nothing.
    pub fn bare(func: u32) -> Op {
        Op {
            func: FnRef(func),
            arg: Arc::from(Vec::new()),
        }
    }
}

/// Index of a node in [`LogicalPlan::nodes`].
pub type NodeIndex = usize;

/// What to do with a record a source cannot parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Malformed {
    /// Fail the task, naming the file and line or row group.
    Fail,
    /// Drop the record and count it.
    Drop,
}

/// How a source's files become Arrow batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReadFormat {
    /// One utf8 column `line` per line.
    Text,
    /// `schema`: an Arrow IPC stream holding only the schema; `None` until the driver
    /// inferred it.
    Csv {
        header: bool,
        delimiter: u8,
        schema: Option<Vec<u8>>,
    },
    JsonLines {
        schema: Vec<u8>,
    },
    Parquet {
        columns: Option<Vec<String>>,
    },
    ArrowIpc,
}

impl ReadFormat {
    /// Bytes the format carries (schema, column names): copied into every split's task.
    pub fn size(&self) -> usize {
        match self {
            ReadFormat::Text | ReadFormat::ArrowIpc => 0,
            ReadFormat::Csv { schema, .. } => schema.as_ref().map_or(0, Vec::len),
            ReadFormat::JsonLines { schema } => schema.len(),
            ReadFormat::Parquet { columns } => columns.iter().flatten().map(|c| c.len() + 8).sum(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ReadFormat::Text => "text_file",
            ReadFormat::Csv { .. } => "csv",
            ReadFormat::JsonLines { .. } => "json_lines",
            ReadFormat::Parquet { .. } => "parquet",
            ReadFormat::ArrowIpc => "arrow_ipc",
        }
    }
}

/// How `save` writes partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteFormat {
    Text,
    Csv,
    JsonLines,
    Parquet,
    ArrowIpc,
}

impl WriteFormat {
    /// The extension of part files (`part-00000.csv`); none for text.
    pub fn extension(self) -> &'static str {
        match self {
            WriteFormat::Text => "",
            WriteFormat::Csv => ".csv",
            WriteFormat::JsonLines => ".jsonl",
            WriteFormat::Parquet => ".parquet",
            WriteFormat::ArrowIpc => ".arrow",
        }
    }
}

/// Where cached partitions are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StorageLevel {
    /// In memory; evicted partitions are dropped and recomputed when needed.
    MemoryOnly,
    /// In memory; evicted partitions go to disk.
    MemoryAndDisk,
    DiskOnly,
}

/// One input of a shuffle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShuffleSide {
    pub parent: NodeIndex,
    pub write: Op,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// Files or directories of files, read in splits.
    Files {
        paths: Vec<String>,
        format: ReadFormat,
        min_partitions: u32,
        malformed: Malformed,
        decode: Op,
    },
    /// Rows the driver program holds: one Arrow IPC stream per partition.
    Inline {
        partitions: Vec<Vec<u8>>,
        decode: Op,
    },
    /// A narrow transformation: fuses into the stage of its parent.
    Narrow {
        parent: NodeIndex,
        apply: Op,
        name: String,
    },
    /// A wide dependency on one or more parents: each side's map tasks partition their
    /// rows with its `write`; the reduce side merges the segments of all sides with `read`.
    Shuffle {
        sides: Vec<ShuffleSide>,
        partitions: Option<u32>,
        read: Op,
        name: String,
    },
    /// The partitions of all parents, in order.
    Union { parents: Vec<NodeIndex> },
    /// `partitions` groups of consecutive parent partitions, without a shuffle.
    Coalesce { parent: NodeIndex, partitions: u32 },
    /// `parent` kept on the executors under the application-wide `id`: written like a
    /// shuffle whose map task `p` keeps partition `p`, read back with `read`.
    Cache {
        parent: NodeIndex,
        id: u32,
        level: StorageLevel,
        write: Op,
        read: Op,
    },
}

impl Node {
    pub fn parents(&self) -> Vec<NodeIndex> {
        match self {
            Node::Files { .. } | Node::Inline { .. } => vec![],
            Node::Narrow { parent, .. }
            | Node::Coalesce { parent, .. }
            | Node::Cache { parent, .. } => vec![*parent],
            Node::Shuffle { sides, .. } => sides.iter().map(|s| s.parent).collect(),
            Node::Union { parents } => parents.clone(),
        }
    }
}

/// What the job does with the final dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Bring rows back to the driver program, encoded by `encode`: all of them, or, with
    /// a `limit`, at least `limit` rows when the dataset has that many (`take`). A limited
    /// collect reads partitions in rounds from the first, as Spark's `take` does, where a
    /// round costs only its own partitions.
    Collect {
        encode: Op,
        limit: Option<u64>,
    },
    Count,
    /// Write one `part-NNNNN` file per partition, rows rendered by `render`.
    Save {
        path: String,
        format: WriteFormat,
        render: Op,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Collect { limit: None, .. } => "collect",
            Action::Collect { limit: Some(_), .. } => "take",
            Action::Count => "count",
            Action::Save { format, .. } => match format {
                WriteFormat::Text => "save_as_text",
                WriteFormat::Csv => "save_as_csv",
                WriteFormat::JsonLines => "save_as_json_lines",
                WriteFormat::Parquet => "save_as_parquet",
                WriteFormat::ArrowIpc => "save_as_arrow",
            },
        }
    }
}

/// Nodes in topological order; the last one is the dataset the action runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogicalPlan {
    pub nodes: Vec<Node>,
    pub action: Action,
}

/// Longest name of a plan node (`map`, `reduce_by_key`): names are copied into every
/// stage that reads the node.
pub const MAX_NODE_NAME: usize = 256;

/// Largest schema (or list of columns) one source may carry: every task of the source
/// carries a copy.
pub const MAX_SOURCE_SCHEMA: usize = 1 << 20;

/// Bounds on what one job's plan may ask of the driver (settings `driver.max_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// Nodes plus edges of the plan; also the operations its stages may hold once shared
    /// inputs are expanded into every branch that reads them.
    pub max_nodes: u32,
    /// Longest chain from a source to the root.
    pub max_depth: u32,
    /// Partitions (and input pieces) of one stage.
    pub max_partitions_per_stage: u32,
    /// Tasks of all stages of one job.
    pub max_tasks_per_job: u32,
    /// Map outputs times reduce partitions, over a job's shuffles: what the map-output
    /// tracker holds a size for.
    pub max_shuffle_blocks: u64,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_nodes: 10_000,
            max_depth: 2_000,
            max_partitions_per_stage: 100_000,
            max_tasks_per_job: 1_000_000,
            max_shuffle_blocks: 20_000_000,
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    #[error("the plan has no nodes")]
    Empty,
    #[error("plan node {node} names parent {parent}, which does not come before it")]
    BadParent { node: usize, parent: usize },
    #[error("plan node {node}: {what}")]
    Invalid { node: usize, what: String },
    /// A bound was hit; `limit` names the setting.
    #[error("{what}, over {limit} = {max}")]
    Limit {
        limit: &'static str,
        what: String,
        max: u64,
    },
}

impl PlanError {
    /// The setting whose bound was hit, for a limit.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            PlanError::Limit { limit, .. } => Some(limit),
            _ => None,
        }
    }
}

impl LogicalPlan {
    /// Checks the structure a guest sent: parents point backwards, counts are sane and
    /// within `limits`. Walks the nodes once, in order, without recursion.
    pub fn validate(&self, limits: &PlanLimits) -> Result<(), PlanError> {
        if self.nodes.is_empty() {
            return Err(PlanError::Empty);
        }
        let edges: usize = self.nodes.iter().map(|n| n.parents().len()).sum();
        let size = self.nodes.len() as u64 + edges as u64;
        if size > limits.max_nodes as u64 {
            return Err(PlanError::Limit {
                limit: "driver.max_plan_nodes",
                what: format!("the plan has {} nodes and {edges} edges", self.nodes.len()),
                max: limits.max_nodes as u64,
            });
        }
        let max_parts = limits.max_partitions_per_stage;
        let too_many = |node: usize, what: &str, n: u64| PlanError::Limit {
            limit: "driver.max_partitions_per_stage",
            what: format!("plan node {node} asks for {n} {what}"),
            max: max_parts as u64,
        };
        let mut depth = vec![0u32; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            let invalid = |what: &str| {
                Err(PlanError::Invalid {
                    node: i,
                    what: what.into(),
                })
            };
            let mut d = 0;
            for parent in node.parents() {
                if parent >= i {
                    return Err(PlanError::BadParent { node: i, parent });
                }
                d = d.max(depth[parent]);
            }
            depth[i] = d + 1;
            if depth[i] > limits.max_depth {
                return Err(PlanError::Limit {
                    limit: "driver.max_plan_depth",
                    what: format!(
                        "the plan is more than {} operations deep at node {i}",
                        limits.max_depth
                    ),
                    max: limits.max_depth as u64,
                });
            }
            if let Node::Narrow { name, .. } | Node::Shuffle { name, .. } = node
                && name.len() > MAX_NODE_NAME
            {
                return invalid(&format!(
                    "its name has {} bytes, over the {MAX_NODE_NAME} a name may have",
                    name.len()
                ));
            }
            match node {
                Node::Files { paths, format, .. } if paths.is_empty() => {
                    return invalid(&format!("{} was given no path", format.name()));
                }
                Node::Files { format, .. } if format.size() > MAX_SOURCE_SCHEMA => {
                    return Err(PlanError::Limit {
                        limit: "the protocol's 1 MiB per source schema",
                        what: format!(
                            "plan node {i}'s {} schema has {} bytes",
                            format.name(),
                            format.size()
                        ),
                        max: MAX_SOURCE_SCHEMA as u64,
                    });
                }
                Node::Files { min_partitions, .. } if *min_partitions > max_parts => {
                    return Err(too_many(i, "partitions at least", *min_partitions as u64));
                }
                Node::Inline { partitions, .. } if partitions.len() as u64 > max_parts as u64 => {
                    return Err(too_many(i, "inline partitions", partitions.len() as u64));
                }
                Node::Shuffle { sides, .. } if sides.is_empty() => {
                    return invalid("a shuffle needs at least one side");
                }
                Node::Shuffle {
                    partitions: Some(0),
                    ..
                } => return invalid("a shuffle needs at least one partition"),
                Node::Shuffle {
                    partitions: Some(n),
                    ..
                } if *n > max_parts => return Err(too_many(i, "shuffle partitions", *n as u64)),
                Node::Union { parents } if parents.is_empty() => {
                    return invalid("a union needs at least one parent");
                }
                Node::Coalesce { partitions: 0, .. } => {
                    return invalid("coalesce needs at least one partition");
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn root(&self) -> NodeIndex {
        self.nodes.len() - 1
    }

    /// Which nodes the action needs (the root and its ancestors), and how many times
    /// each is read by a needed node. One pass from the root down: parents come first.
    pub fn needed(&self) -> (Vec<bool>, Vec<u32>) {
        let n = self.nodes.len();
        let mut needed = vec![false; n];
        let mut readers = vec![0u32; n];
        if n == 0 {
            return (needed, readers);
        }
        needed[self.root()] = true;
        for i in (0..n).rev() {
            if !needed[i] {
                continue;
            }
            for p in self.nodes[i].parents() {
                if let Some(slot) = needed.get_mut(p) {
                    *slot = true;
                    readers[p] += 1;
                }
            }
        }
        (needed, readers)
    }
}
