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
    Csv(CsvFormat),
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
            ReadFormat::Csv(c) => {
                c.schema.as_ref().map_or(0, Vec::len)
                    + c.null_values.iter().map(|v| v.len() + 8).sum::<usize>()
                    + c.date_formats
                        .iter()
                        .map(|d| d.column.len() + d.format.len() + 16)
                        .sum::<usize>()
            }
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

/// How a column is compared with a value in a source's filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    IsNull,
    IsNotNull,
}

/// A value a column is compared with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

/// One comparison of a source's filter (a conjunction of them): a row passes when its
/// `column` compares to `value` as `op` says. As in SQL, a null cell (or a null value)
/// passes only `IsNull`. The host checks it on the rows before the job sees them, and
/// skips what cannot pass: partition directories by their value, Parquet row groups by
/// their statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ColumnPredicate {
    pub column: String,
    pub op: CompareOp,
    pub value: Literal,
}

impl ColumnPredicate {
    /// Bytes it carries into every split's task.
    pub fn size(&self) -> usize {
        self.column.len()
            + 24
            + match &self.value {
                Literal::Text(t) => t.len(),
                _ => 0,
            }
    }
}

impl ColumnPredicate {
    /// Whether the rows of a file under `column=value/` pass, where the column is read
    /// as integers (`integer`) or text, by the rule the rows are filtered with; `None`
    /// when it cannot tell here (the rows are filtered anyway).
    pub fn passes_partition(&self, value: Option<&str>, integer: bool) -> Option<bool> {
        use std::cmp::Ordering;
        let Some(value) = value else {
            return Some(self.op == CompareOp::IsNull);
        };
        let order = match (self.op, &self.value) {
            (CompareOp::IsNull, _) => return Some(false),
            (CompareOp::IsNotNull, _) => return Some(true),
            (_, Literal::Null) => return Some(false),
            (_, Literal::Int(i)) if integer => value.parse::<i64>().ok()?.cmp(i),
            (_, Literal::Float(x)) if integer => {
                (value.parse::<i64>().ok()? as f64).partial_cmp(x)?
            }
            (_, Literal::Text(t)) if integer => value.parse::<i64>().ok()?.cmp(&t.parse().ok()?),
            (_, Literal::Text(t)) => value.cmp(t.as_str()),
            (_, Literal::Int(i)) => value.cmp(i.to_string().as_str()),
            _ => return None,
        };
        Some(match self.op {
            CompareOp::Eq => order == Ordering::Equal,
            CompareOp::NotEq => order != Ordering::Equal,
            CompareOp::Lt => order == Ordering::Less,
            CompareOp::LtEq => order != Ordering::Greater,
            CompareOp::Gt => order == Ordering::Greater,
            CompareOp::GtEq => order != Ordering::Less,
            CompareOp::IsNull | CompareOp::IsNotNull => unreachable!("answered above"),
        })
    }
}

impl std::fmt::Display for ColumnPredicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            CompareOp::Eq => "=",
            CompareOp::NotEq => "!=",
            CompareOp::Lt => "<",
            CompareOp::LtEq => "<=",
            CompareOp::Gt => ">",
            CompareOp::GtEq => ">=",
            CompareOp::IsNull => return write!(f, "{} is null", self.column),
            CompareOp::IsNotNull => return write!(f, "{} is not null", self.column),
        };
        write!(f, "{} {op} ", self.column)?;
        match &self.value {
            Literal::Null => write!(f, "null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x}"),
            Literal::Text(t) => write!(f, "{t:?}"),
        }
    }
}

/// Comparisons one source's filter may have.
pub const MAX_FILTER_PREDICATES: usize = 64;

/// How CSV files are read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CsvFormat {
    /// The first line of each file names the columns; columns are then matched to the
    /// schema's fields by name, else by position.
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
    /// Escapes a quote inside a quoted field; `None`: a quote is escaped by doubling it.
    pub escape: Option<u8>,
    /// Lines starting with this byte are skipped.
    pub comment: Option<u8>,
    /// Cells equal to one of these are null.
    pub null_values: Vec<String>,
    /// Quoted fields may hold line breaks: each file is read whole, as one split.
    pub multi_line: bool,
    /// Columns of dates or timestamps written another way than ISO 8601: each cell is
    /// read with the format and handed to the rows as ISO text.
    pub date_formats: Vec<DateFormat>,
    /// An Arrow IPC stream holding only the schema; `None` until the driver inferred it.
    pub schema: Option<Vec<u8>>,
    /// The driver inferred `schema` from a sample: a file may lack some of its columns.
    /// A schema the row type gave is required whole of every file.
    pub inferred: bool,
}

/// How one CSV column writes its dates or timestamps: a strftime format (chrono's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateFormat {
    pub column: String,
    pub format: String,
}

/// The compression of written files, or of the pages of a Parquet file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    Uncompressed,
    Snappy,
    Gzip,
    Zstd,
    Lz4,
    Brotli,
    Bzip2,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Uncompressed => "uncompressed",
            Codec::Snappy => "snappy",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
            Codec::Brotli => "brotli",
            Codec::Bzip2 => "bzip2",
        }
    }

    /// The file-name suffix of a whole file compressed with this codec (`.gz`).
    pub fn file_suffix(self) -> &'static str {
        match self {
            Codec::Gzip => ".gz",
            Codec::Zstd => ".zst",
            Codec::Bzip2 => ".bz2",
            _ => "",
        }
    }
}

/// What `save` does when its output directory already holds files (Spark's `mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaveMode {
    /// Fail the job (the default).
    #[default]
    ErrorIfExists,
    /// Replace what is there, once the job has succeeded.
    Overwrite,
    /// Add part files beside what is there.
    Append,
    /// Do nothing when there is output already.
    Ignore,
}

/// How `save` lays out and writes its files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveOptions {
    pub mode: SaveMode,
    /// `None`: the format's default (uncompressed text, zstd Parquet).
    pub compression: Option<Codec>,
    /// Hive-style `column=value/` directories by these columns, which the files then
    /// leave out.
    pub partition_by: Vec<String>,
}

/// Most columns a save may partition by: each is a directory level.
pub const MAX_PARTITION_COLUMNS: usize = 16;

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

    /// Whether files of this format can be written with `codec`: the line formats
    /// compress whole files, Parquet its pages.
    pub fn takes(self, codec: Codec) -> bool {
        match self {
            WriteFormat::Text | WriteFormat::Csv | WriteFormat::JsonLines => matches!(
                codec,
                Codec::Uncompressed | Codec::Gzip | Codec::Zstd | Codec::Bzip2
            ),
            WriteFormat::Parquet => codec != Codec::Bzip2,
            WriteFormat::ArrowIpc => codec == Codec::Uncompressed,
        }
    }

    /// The end of part file names written with `codec`: the format's extension, and the
    /// codec's suffix when it compresses the whole file (`.csv.gz`, but `.parquet`).
    pub fn file_suffix(self, codec: Codec) -> String {
        let whole_file = matches!(
            self,
            WriteFormat::Text | WriteFormat::Csv | WriteFormat::JsonLines
        );
        let codec = if whole_file { codec.file_suffix() } else { "" };
        format!("{}{codec}", self.extension())
    }

    /// The codec a save without a `compression` uses.
    pub fn default_codec(self) -> Codec {
        match self {
            WriteFormat::Parquet => Codec::Zstd,
            _ => Codec::Uncompressed,
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
    /// An id the driver program gives this side's map output (from the same numbers as
    /// its cached datasets'): the output is kept for later jobs of the application that
    /// read the same shuffle (Spark keeps shuffle files), until the program unpersists
    /// the id or ends. `None`: written for its job only.
    pub keep: Option<u32>,
}

/// How a two-sided shuffle (a join) may run as a broadcast hash join: side `stream` is
/// not shuffled; its rows go through `probe`, a narrow op that looks them up in a hash
/// table of the other side's rows, which the host serves whole to every task (the
/// build side). The op's argument is set by the driver: the build side's index among the
/// task's build inputs, as 4 little-endian bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinProbe {
    pub stream: u32,
    pub probe: Op,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// Files or directories of files, read in splits.
    Files {
        paths: Vec<String>,
        format: ReadFormat,
        min_partitions: u32,
        malformed: Malformed,
        /// Rows pass when every predicate holds.
        filter: Vec<ColumnPredicate>,
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
        /// The ways it may run as a broadcast hash join (none: only shuffled).
        probes: Vec<JoinProbe>,
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
    /// Write one `part-NNNNN` file per partition (per partition directory), rows
    /// rendered by `render`.
    Save {
        path: String,
        format: WriteFormat,
        render: Op,
        options: SaveOptions,
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

/// Most strings a CSV source may take as nulls.
pub const MAX_NULL_VALUES: usize = 64;

/// Most columns a CSV source may give date formats.
pub const MAX_DATE_FORMATS: usize = 64;

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
                Node::Files {
                    format: ReadFormat::Csv(c),
                    ..
                } if c.null_values.len() > MAX_NULL_VALUES => {
                    return invalid(&format!(
                        "csv has {} null values, over the {MAX_NULL_VALUES} a source may have",
                        c.null_values.len()
                    ));
                }
                Node::Files {
                    format: ReadFormat::Csv(c),
                    ..
                } if c.date_formats.len() > MAX_DATE_FORMATS => {
                    return invalid(&format!(
                        "csv has {} date formats, over the {MAX_DATE_FORMATS} a source may have",
                        c.date_formats.len()
                    ));
                }
                Node::Files {
                    format: ReadFormat::Csv(c),
                    ..
                } if c
                    .date_formats
                    .iter()
                    .enumerate()
                    .any(|(j, d)| c.date_formats[..j].iter().any(|e| e.column == d.column)) =>
                {
                    return invalid("csv gives a column two date formats");
                }
                Node::Files {
                    format: ReadFormat::Text,
                    filter,
                    ..
                } if !filter.is_empty() => {
                    return invalid(
                        "filter_columns does not apply to text_file: its rows are lines, not columns; use filter",
                    );
                }
                Node::Files { filter, .. } if filter.len() > MAX_FILTER_PREDICATES => {
                    return invalid(&format!(
                        "its filter has {} comparisons, over the {MAX_FILTER_PREDICATES} a source may have",
                        filter.len()
                    ));
                }
                Node::Files { filter, .. }
                    if filter.iter().map(ColumnPredicate::size).sum::<usize>()
                        > MAX_SOURCE_SCHEMA =>
                {
                    return Err(PlanError::Limit {
                        limit: "the protocol's 1 MiB per source schema",
                        what: format!("plan node {i}'s filter"),
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
                Node::Shuffle { sides, probes, .. }
                    if !probes.is_empty()
                        && (sides.len() != 2
                            || probes.len() > 2
                            || probes.iter().any(|p| p.stream >= 2)) =>
                {
                    return invalid(
                        "a join probe needs a shuffle of two sides and names one of them",
                    );
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
        if let Action::Save {
            format, options, ..
        } = &self.action
        {
            let invalid = |what: String| {
                Err(PlanError::Invalid {
                    node: self.root(),
                    what,
                })
            };
            let name = self.action.name();
            if let Some(c) = options.compression
                && !format.takes(c)
            {
                return invalid(format!("{name} cannot compress with {}", c.name()));
            }
            if options.partition_by.len() > MAX_PARTITION_COLUMNS {
                return invalid(format!(
                    "{name} partitions by {} columns, over the {MAX_PARTITION_COLUMNS} it may",
                    options.partition_by.len()
                ));
            }
            if !options.partition_by.is_empty() && *format == WriteFormat::Text {
                return invalid(format!("{name} has no columns to partition by"));
            }
            for (i, c) in options.partition_by.iter().enumerate() {
                // A directory name `c=…` must not be hidden from listing nor climb out.
                if c.is_empty()
                    || c.len() > MAX_NODE_NAME
                    || c.starts_with(['.', '_'])
                    || c.contains(['/', '=', '\\', '\0'])
                {
                    return invalid(format!("{name}: {c:?} cannot name a partition column"));
                }
                if options.partition_by[..i].contains(c) {
                    return invalid(format!("{name} partitions by {c:?} twice"));
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn save(format: WriteFormat, options: SaveOptions) -> LogicalPlan {
        LogicalPlan {
            nodes: vec![Node::Inline {
                partitions: vec![],
                decode: Op::bare(0),
            }],
            action: Action::Save {
                path: "out".into(),
                format,
                render: Op::bare(1),
                options,
            },
        }
    }

    #[test]
    fn partition_values_pass_a_filter_as_their_rows_would() {
        let p = |op, value| ColumnPredicate {
            column: "year".into(),
            op,
            value,
        };
        let eq = p(CompareOp::Eq, Literal::Int(2013));
        assert_eq!(eq.passes_partition(Some("2013"), true), Some(true));
        assert_eq!(eq.passes_partition(Some("2014"), true), Some(false));
        assert_eq!(
            eq.passes_partition(None, true),
            Some(false),
            "null passes no ="
        );
        // A text column compares text: "02013" is not "2013", "9" sorts after "10".
        assert_eq!(eq.passes_partition(Some("02013"), false), Some(false));
        let lt = p(CompareOp::Lt, Literal::Text("10".into()));
        assert_eq!(lt.passes_partition(Some("9"), false), Some(false));
        assert_eq!(lt.passes_partition(Some("9"), true), Some(true));
        let gt = p(CompareOp::Gt, Literal::Float(2013.5));
        assert_eq!(gt.passes_partition(Some("2014"), true), Some(true));
        assert_eq!(gt.passes_partition(Some("x"), false), None, "cannot tell");
        let null = p(CompareOp::IsNull, Literal::Null);
        assert_eq!(null.passes_partition(None, false), Some(true));
        assert_eq!(null.passes_partition(Some("UA"), false), Some(false));
        assert_eq!(eq.to_string(), "year = 2013");
    }

    #[test]
    fn a_save_names_a_codec_its_format_takes_and_sane_partition_columns() {
        let ok = |format, compression, cols: &[&str]| {
            save(
                format,
                SaveOptions {
                    compression,
                    partition_by: cols.iter().map(|c| c.to_string()).collect(),
                    ..Default::default()
                },
            )
            .validate(&PlanLimits::default())
        };
        assert!(
            ok(
                WriteFormat::Parquet,
                Some(Codec::Brotli),
                &["year", "month"]
            )
            .is_ok()
        );
        assert!(ok(WriteFormat::Csv, Some(Codec::Gzip), &["year"]).is_ok());
        for (format, codec) in [
            (WriteFormat::Csv, Codec::Snappy),
            (WriteFormat::Parquet, Codec::Bzip2),
            (WriteFormat::ArrowIpc, Codec::Zstd),
        ] {
            let e = ok(format, Some(codec), &[]).unwrap_err();
            assert!(e.to_string().contains("cannot compress"), "{e}");
        }
        for cols in [
            &["a/b"][..],
            &["../x"],
            &["_hidden"],
            &["a=b"],
            &[""],
            &["y", "y"],
        ] {
            assert!(ok(WriteFormat::Parquet, None, cols).is_err(), "{cols:?}");
        }
        assert!(ok(WriteFormat::Text, None, &["line"]).is_err());
        let many: Vec<String> = (0..=MAX_PARTITION_COLUMNS)
            .map(|i| format!("c{i}"))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(ok(WriteFormat::Parquet, None, &refs).is_err());
    }

    #[test]
    fn only_whole_file_codecs_name_part_files() {
        assert_eq!(WriteFormat::Csv.file_suffix(Codec::Gzip), ".csv.gz");
        assert_eq!(WriteFormat::Text.file_suffix(Codec::Zstd), ".zst");
        assert_eq!(
            WriteFormat::JsonLines.file_suffix(Codec::Uncompressed),
            ".jsonl"
        );
        assert_eq!(WriteFormat::Parquet.file_suffix(Codec::Zstd), ".parquet");
    }
}
