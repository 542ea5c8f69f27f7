//! Cutting a [`LogicalPlan`] into stages at shuffle boundaries (the DAG scheduler's
//! planning half). Narrow nodes fuse into the stage of their parent; each shuffle ends
//! one map stage per side and starts a new stage that reads them all; unions and
//! coalesces stay inside a stage, whose tasks then read several *pieces* in turn.

use crate::ids::ShuffleId;
use crate::plan::{
    Action, JoinProbe, LogicalPlan, Node, NodeIndex, Op, PlanError, PlanLimits, ShuffleSide,
    StorageLevel,
};
use serde::{Deserialize, Serialize};

/// Where a branch of a stage gets its rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageInput {
    /// The partitions of the source at plan node `node` (file splits or inline rows).
    Source { node: NodeIndex, decode: Op },
    /// The reduce side of a shuffle: one shuffle per side, merged by `read`. With
    /// `coalesce` (its partition count was not asked for), adaptive execution may have a
    /// task read several consecutive partitions.
    Shuffle {
        shuffles: Vec<ShuffleId>,
        read: Op,
        coalesce: bool,
    },
}

/// One input of a stage with the narrow ops that apply to it alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Branch {
    pub input: StageInput,
    pub ops: Vec<Op>,
    pub partitions: u32,
}

/// A partition of a branch, read by a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceRef {
    pub branch: u32,
    pub partition: u32,
    /// Only these map outputs of one side (a share of a skewed join partition); `None`:
    /// every map output of every side.
    pub maps: Option<MapRange>,
}

/// One map output's bytes per reduce partition, as the adaptive planner reads them.
pub trait SegmentSizes {
    fn partitions(&self) -> usize;
    /// Partition `partition`'s bytes; `partition < partitions()`.
    fn size(&self, partition: usize) -> u64;
}

impl SegmentSizes for [u64] {
    fn partitions(&self) -> usize {
        self.len()
    }
    fn size(&self, partition: usize) -> u64 {
        self[partition]
    }
}

impl SegmentSizes for Vec<u64> {
    fn partitions(&self) -> usize {
        self.len()
    }
    fn size(&self, partition: usize) -> u64 {
        self[partition]
    }
}

impl<T: SegmentSizes + ?Sized> SegmentSizes for &T {
    fn partitions(&self) -> usize {
        (**self).partitions()
    }
    fn size(&self, partition: usize) -> u64 {
        (**self).size(partition)
    }
}

/// Map outputs `start..end` of side `side` of a shuffle read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapRange {
    pub side: u32,
    pub start: u32,
    pub end: u32,
}

impl PieceRef {
    /// Partition `partition` of branch `branch`, whole.
    pub fn whole(branch: u32, partition: u32) -> PieceRef {
        PieceRef {
            branch,
            partition,
            maps: None,
        }
    }
}

/// A cached dataset of the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub id: u32,
    pub level: StorageLevel,
    /// A shuffle's map output kept whole for later jobs (`ShuffleSide::keep`), rather
    /// than a cached dataset, whose map task `p` keeps partition `p`.
    pub shuffle_output: bool,
}

/// What a stage's tasks produce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageOutput {
    /// Map side of a shuffle: one segment per reduce partition. For a cached dataset
    /// (`cache`), map task `p` keeps partition `p` for the whole application.
    ShuffleWrite {
        shuffle: ShuffleId,
        partitions: u32,
        write: Op,
        cache: Option<CacheKey>,
    },
    /// The job's action, per partition.
    Result(Action),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageDef {
    /// Index in [`JobDag::stages`]; parents always have smaller indices.
    pub index: u32,
    /// Stages whose shuffle output this one reads.
    pub parents: Vec<u32>,
    pub branches: Vec<Branch>,
    /// Per partition of this stage, the branch partitions its task reads, in order.
    pub pieces: Vec<Vec<PieceRef>>,
    /// Narrow ops applied after the branches' own, across all pieces of a task.
    pub ops: Vec<Op>,
    pub output: StageOutput,
    pub partitions: u32,
    /// Human-readable pipeline, e.g. `text_file → flat_map → map → reduce_by_key`.
    pub name: String,
    /// The build sides of the broadcast hash joins among `ops`, by the index their probe
    /// op names: every task reads each whole (all reduce partitions of the shuffle).
    pub builds: Vec<ShuffleId>,
    /// Stages that must be done before this one starts though it reads nothing of
    /// theirs: the small side of a join runs first, so that the large one may not need
    /// a shuffle at all (see [`JobDag::broadcast_join`]).
    pub after: Vec<u32>,
    /// For a stage that reads a join's shuffle: the ways it may run as a broadcast hash
    /// join instead, decided once a side's map output is known to be small.
    pub broadcast: Vec<BroadcastCandidate>,
}

/// One way a join's reading stage may become a broadcast hash join.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BroadcastCandidate {
    /// The map stage of the side that is not shuffled: its tasks will run the join.
    pub stream_stage: u32,
    /// The map stage of the side every task reads whole.
    pub build_stage: u32,
    pub build_shuffle: ShuffleId,
    /// The narrow op that joins stream rows with the build side.
    pub probe: Op,
}

impl StageDef {
    /// The shuffles this stage reads: its shuffle inputs and its build sides.
    pub fn reads(&self) -> impl Iterator<Item = ShuffleId> + '_ {
        self.branches
            .iter()
            .flat_map(|b| {
                match &b.input {
                    StageInput::Shuffle { shuffles, .. } => shuffles.as_slice(),
                    StageInput::Source { .. } => &[],
                }
                .iter()
                .copied()
            })
            .chain(self.builds.iter().copied())
    }

    /// Whether it writes a cached dataset, whose partition `p` its task `p` keeps: its
    /// tasks must stay as they are.
    pub fn keeps_cache(&self) -> bool {
        matches!(
            self.output,
            StageOutput::ShuffleWrite {
                cache: Some(CacheKey {
                    shuffle_output: false,
                    ..
                }),
                ..
            }
        )
    }

    /// The shuffle this stage writes, if it is a map stage.
    pub fn writes(&self) -> Option<ShuffleId> {
        match self.output {
            StageOutput::ShuffleWrite { shuffle, .. } => Some(shuffle),
            StageOutput::Result(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDag {
    pub stages: Vec<StageDef>,
}

impl JobDag {
    /// The final stage, which runs the action.
    pub fn result_stage(&self) -> &StageDef {
        self.stages.last().expect("a DAG has at least one stage")
    }

    /// The cached dataset shuffle `shuffle` keeps, if it is one.
    pub fn cache_of(&self, shuffle: ShuffleId) -> Option<CacheKey> {
        self.stages.iter().find_map(|s| match s.output {
            StageOutput::ShuffleWrite {
                shuffle: sh, cache, ..
            } if sh == shuffle => cache,
            _ => None,
        })
    }

    /// Whether the result stage can read some of its partitions without recomputing a
    /// shuffle: it reads sources and cached datasets only.
    pub fn result_reads_cheaply(&self) -> bool {
        self.result_stage()
            .reads()
            .all(|shuffle| self.cache_of(shuffle).is_some())
    }

    /// Turns stage `j`, which reads a join's shuffle, into a broadcast hash join by its
    /// candidate `c`: the stream side's map stage is absorbed into `j`, whose tasks now
    /// read that side's inputs, run its ops, look each row up in the build side (read
    /// whole by every task) and go on with `j`'s own ops and output. The absorbed stage
    /// keeps its index with no tasks; `j` keeps its index and output, with as many tasks
    /// as the stream side had. Returns what changed, for the UI and the event log; the
    /// caller checks that the stream side's shuffle is read by `j` alone and that no
    /// task of it ran.
    pub fn broadcast_join(&mut self, j: u32, c: usize, build_bytes: u64) -> Option<String> {
        let join = self.stages.get(j as usize)?;
        if join.keeps_cache() {
            return None;
        }
        let cand = join.broadcast.get(c)?.clone();
        let [branch] = join.branches.as_slice() else {
            return None;
        };
        let a = cand.stream_stage as usize;
        let stream = self.stages.get(a)?.clone();
        // The probe reads build side 0 of the stage, named before its own captured value.
        let mut probe = cand.probe.clone();
        let mut arg = 0u32.to_le_bytes().to_vec();
        arg.extend_from_slice(&probe.arg);
        probe.arg = arg.into();
        let mut ops = stream.ops.clone();
        ops.push(probe);
        ops.extend(branch.ops.iter().cloned());
        ops.extend(join.ops.iter().cloned());
        let mut parents = stream.parents.clone();
        parents.push(cand.build_stage);
        parents.sort_unstable();
        parents.dedup();
        let mut after: Vec<u32> = stream
            .after
            .iter()
            .chain(&join.after)
            .copied()
            .filter(|s| *s != cand.build_stage && !parents.contains(s))
            .collect();
        after.sort_unstable();
        after.dedup();
        // `parquet → map → join (write)` and `join (read) → map → …` become
        // `parquet → map → join (broadcast hash join of stage b) → map → …`.
        let mut names: Vec<&str> = stream.name.split(" → ").collect();
        names.pop();
        let rest: Vec<&str> = join.name.split(" → ").skip(1).collect();
        let op_name = join
            .name
            .split(" → ")
            .next()
            .unwrap_or("join")
            .trim_end_matches(" (read)")
            .to_string();
        let joined = format!(
            "{op_name} (broadcast hash join of stage {})",
            cand.build_stage
        );
        names.push(&joined);
        names.extend(rest);
        let name = names.join(" → ");
        let tasks = stream.pieces.len();
        let join = &mut self.stages[j as usize];
        join.branches = stream.branches.clone();
        join.pieces = stream.pieces.clone();
        join.partitions = stream.partitions;
        join.ops = ops;
        join.parents = parents;
        join.after = after;
        join.builds = vec![cand.build_shuffle];
        join.broadcast.clear();
        join.name = name;
        let absorbed = &mut self.stages[a];
        absorbed.pieces.clear();
        absorbed.partitions = 0;
        absorbed.parents.clear();
        absorbed.after.clear();
        absorbed.broadcast.clear();
        absorbed.name = format!("(absorbed into stage {j}: broadcast hash join)");
        Some(format!(
            "stage {j} is a broadcast hash join: stage {}'s output ({build_bytes} bytes, within join.broadcast_threshold) is read whole by each of {tasks} tasks that read stage {a}'s inputs, so stage {a}'s side is not shuffled",
            cand.build_stage
        ))
    }

    /// Plans how stage `s`, which reads shuffles, reads them, from what their map outputs
    /// hold: `sizes[side][map][partition]` bytes. Consecutive small partitions are read
    /// together, in tasks of about `target` bytes (a partition larger than that alone),
    /// when the stage's partition count was not asked for; and a partition of a join
    /// that is skewed (`skew`: past `factor` times the median of its side, and past
    /// `min_bytes`) is read by several tasks, each with a share of the map outputs of
    /// the side that may be split (one whose rows the join streams: each of its rows
    /// meets the other side's whole partition once) and the other side whole, as
    /// Spark's skew join does. Returns what changed, or `None` when the stage may not be
    /// re-planned (it reads more than one input, its tasks already read several
    /// partitions, it keeps a cached dataset) or nothing would change.
    pub fn plan_reads<M: SegmentSizes>(
        &mut self,
        s: u32,
        sizes: &[Vec<M>],
        target: u64,
        skew: Option<Skew>,
    ) -> Option<String> {
        let stage = self.stages.get(s as usize)?;
        if stage.keeps_cache() {
            return None;
        }
        let [branch] = stage.branches.as_slice() else {
            return None;
        };
        let StageInput::Shuffle {
            shuffles, coalesce, ..
        } = &branch.input
        else {
            return None;
        };
        let coalesce = *coalesce;
        let n = branch.partitions as usize;
        let identity = stage.pieces.len() == n
            && stage.pieces.iter().enumerate().all(
                |(p, refs)| matches!(refs.as_slice(), [r] if *r == PieceRef::whole(0, p as u32)),
            );
        if !identity
            || sizes.len() != shuffles.len()
            || sizes.iter().flatten().any(|m| m.partitions() != n)
        {
            return None;
        }
        // Sides whose rows the join streams may be split.
        let splittable: Vec<bool> = shuffles
            .iter()
            .map(|sh| {
                let writer = self.stages.iter().position(|w| w.writes() == Some(*sh));
                stage
                    .broadcast
                    .iter()
                    .any(|c| Some(c.stream_stage as usize) == writer)
            })
            .collect();
        let side_total = |i: usize, p: usize| sizes[i].iter().map(|m| m.size(p)).sum::<u64>();
        let total_of = |p: usize| (0..sizes.len()).map(|i| side_total(i, p)).sum::<u64>();
        let medians: Vec<u64> = (0..sizes.len())
            .map(|i| {
                let mut v: Vec<u64> = (0..n).map(|p| side_total(i, p)).collect();
                v.sort_unstable();
                v.get(n / 2).copied().unwrap_or(0)
            })
            .collect();
        let skewed_side = |p: usize| -> Option<usize> {
            let skew = skew?;
            (0..sizes.len())
                .filter(|&i| splittable[i] && sizes[i].len() > 1)
                .filter(|&i| {
                    let b = side_total(i, p);
                    b > skew.min_bytes && b as f64 > skew.factor * medians[i] as f64
                })
                .max_by_key(|&i| side_total(i, p))
        };
        let mut groups: Vec<Vec<PieceRef>> = Vec::new();
        let mut open: Option<u64> = None;
        let mut splits = Vec::new();
        for p in 0..n {
            if let Some(i) = skewed_side(p) {
                // Consecutive map outputs of side `i` of about `target` bytes each.
                open = None;
                let mut start = 0usize;
                let mut bytes = 0u64;
                let maps = sizes[i].len();
                let mut shares = 0;
                for (m, sz) in sizes[i].iter().map(|m| m.size(p)).enumerate() {
                    bytes += sz;
                    if bytes >= target || m + 1 == maps {
                        groups.push(vec![PieceRef {
                            branch: 0,
                            partition: p as u32,
                            maps: Some(MapRange {
                                side: i as u32,
                                start: start as u32,
                                end: m as u32 + 1,
                            }),
                        }]);
                        shares += 1;
                        start = m + 1;
                        bytes = 0;
                    }
                }
                splits.push(format!(
                    "partition {p} ({} bytes of side {i}, over {} times its median of {}) is read by {shares} tasks, each with a share of side {i}'s map outputs",
                    side_total(i, p),
                    skew.map_or(0.0, |k| k.factor),
                    medians[i]
                ));
                continue;
            }
            let size = total_of(p);
            match open {
                Some(b) if coalesce && b.saturating_add(size) <= target => {
                    groups
                        .last_mut()
                        .expect("a group is open")
                        .push(PieceRef::whole(0, p as u32));
                    open = Some(b + size);
                }
                _ => {
                    groups.push(vec![PieceRef::whole(0, p as u32)]);
                    open = Some(size);
                }
            }
        }
        if groups.len() == n && splits.is_empty() {
            return None;
        }
        let total: u64 = (0..n).map(total_of).sum();
        let stage = &mut self.stages[s as usize];
        stage.pieces = groups;
        stage.partitions = stage.pieces.len() as u32;
        let mut said = format!(
            "stage {s} reads its {n} shuffle partitions ({total} bytes) in {} tasks",
            stage.partitions
        );
        if coalesce {
            said.push_str(&format!(" of about {target} bytes"));
        }
        for sp in splits {
            said.push_str("; skewed ");
            said.push_str(&sp);
        }
        Some(said)
    }

    /// This DAG with its result stage cut to the partitions in `range`, which become
    /// partitions `0..range.len()` of the job (the rounds of a `take`).
    pub fn with_result_partitions(&self, range: std::ops::Range<u32>) -> JobDag {
        let mut dag = self.clone();
        if let Some(result) = dag.stages.last_mut() {
            let end = (range.end as usize).min(result.pieces.len());
            let start = (range.start as usize).min(end);
            result.pieces = result.pieces[start..end].to_vec();
            result.partitions = result.pieces.len() as u32;
        }
        dag
    }
}

/// How many more partitions the next round of a `take` of `limit` rows reads, after
/// `scanned` partitions gave `found` rows. Spark's rule (`spark.rdd.limit.scaleUpFactor`
/// = 4): one partition first; then four times as many as were read while nothing is
/// found; else 1.5 × what the rows found so far suggest, at least one, at most four
/// times as many as were read.
pub fn take_round(limit: u64, found: u64, scanned: u32) -> u32 {
    const SCALE_UP: u64 = 4;
    let s = scanned as u64;
    let more = if scanned == 0 {
        1
    } else if found == 0 {
        s * SCALE_UP
    } else {
        let suggested = (1.5 * limit as f64 * s as f64 / found as f64) as u64;
        suggested.saturating_sub(s).clamp(1, s * SCALE_UP)
    };
    more.min(u32::MAX as u64) as u32
}

/// Largest captured-value and inline-row bytes one task may carry: its descriptor must
/// fit a frame to the executor ([`crate::wire::MAX_FRAME`]) with room to spare.
pub const MAX_TASK_PLAN_BYTES: u64 = (crate::wire::MAX_FRAME / 2) as u64;

/// Builds the stage DAG.
///
/// `source_partitions(node)` says how many splits a file source has (the driver lists
/// files to know); `default_shuffle_partitions` applies where a shuffle names no count
/// (`None`: as many as its largest side has, Spark's RDD default). `limits` bound what
/// the result may hold: the plan is checked first, and the expansion of shared inputs
/// into every stage that reads them is counted as it happens, before it is allocated.
///
/// The nodes are visited once each, in order (parents always come first), with no
/// recursion: a plan thousands of nodes long cannot exhaust the driver's stack. A node
/// read by several others is built once; its pipeline is copied only for the extra
/// readers, and each copy is counted against the limits.
pub fn build_dag(
    plan: &LogicalPlan,
    source_partitions: &dyn Fn(NodeIndex) -> u32,
    default_shuffle_partitions: Option<u32>,
    limits: &PlanLimits,
) -> Result<JobDag, PlanError> {
    build_dag_with(
        plan,
        &DagInputs {
            source_partitions,
            source_bytes: &|_| None,
            default_shuffle_partitions,
            broadcast_threshold: 0,
        },
        limits,
    )
}

/// When a partition of a join counts as skewed (Spark's `skewedPartitionFactor` and
/// `skewedPartitionThresholdInBytes`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Skew {
    pub factor: f64,
    pub min_bytes: u64,
}

/// What the driver knows of a plan's inputs before it runs, and how it may adapt it.
pub struct DagInputs<'a> {
    /// Splits of each source node.
    pub source_partitions: &'a dyn Fn(NodeIndex) -> u32,
    /// Bytes a source node reads, when known (files: their sizes).
    pub source_bytes: &'a dyn Fn(NodeIndex) -> Option<u64>,
    /// Reduce partitions of a shuffle that names none (`shuffle.partitions`).
    pub default_shuffle_partitions: Option<u32>,
    /// A join side whose map output is at most this is broadcast instead of shuffled
    /// (`join.broadcast_threshold`); 0: joins are always shuffled.
    pub broadcast_threshold: u64,
}

/// [`build_dag`] with what the driver knows of the inputs: joins may become broadcast
/// hash joins, and the side that reads less runs first when it may be small enough.
pub fn build_dag_with(
    plan: &LogicalPlan,
    inputs: &DagInputs<'_>,
    limits: &PlanLimits,
) -> Result<JobDag, PlanError> {
    let source_partitions = inputs.source_partitions;
    let default_shuffle_partitions = inputs.default_shuffle_partitions;
    plan.validate(limits)?;
    let n = plan.nodes.len();
    let root = plan.root();
    // What the action needs, and how many times each node is read.
    let (needed, readers) = plan.needed();
    let mut b = Builder {
        plan,
        source_partitions,
        source_bytes: inputs.source_bytes,
        broadcast_threshold: inputs.broadcast_threshold,
        default_shuffle_partitions,
        limits: *limits,
        stages: Vec::new(),
        built: (0..n).map(|_| None).collect(),
        readers,
        next_shuffle: 0,
        map_tasks: Vec::new(),
        ops: 0,
        tasks: 0,
        pieces: 0,
        blocks: 0,
    };
    for (i, needed) in needed.into_iter().enumerate() {
        if needed {
            let p = b.build(i)?;
            b.built[i] = Some(p);
        }
    }
    let p = b.built[root].take().expect("the root was built");
    let mut names = p.names.clone();
    names.push(plan.action.name().to_string());
    b.push_stage(p, StageOutput::Result(plan.action.clone()), names)?;
    Ok(JobDag { stages: b.stages })
}

/// The part of a stage built so far, from its inputs up to some node.
#[derive(Clone)]
struct Pipeline {
    parents: Vec<u32>,
    branches: Vec<Branch>,
    pieces: Vec<Vec<PieceRef>>,
    /// Input pieces over all partitions (a union or coalesce puts several in one), kept
    /// as they change: bounds are checked against it before copies are made.
    piece_count: u64,
    tail: Vec<Op>,
    names: Vec<String>,
    /// Set while the pipeline is a join's reading side alone (see `StageDef::broadcast`).
    broadcast: Vec<BroadcastCandidate>,
}

impl Pipeline {
    fn single(input: StageInput, partitions: u32, parents: Vec<u32>, name: String) -> Pipeline {
        Pipeline {
            broadcast: Vec::new(),
            parents,
            branches: vec![Branch {
                input,
                ops: Vec::new(),
                partitions,
            }],
            pieces: (0..partitions)
                .map(|p| vec![PieceRef::whole(0, p)])
                .collect(),
            piece_count: partitions as u64,
            tail: Vec::new(),
            names: vec![name],
        }
    }

    fn piece_count(&self) -> u64 {
        self.piece_count
    }

    /// Operations it holds.
    fn op_count(&self) -> u64 {
        self.tail.len() as u64
            + self
                .branches
                .iter()
                .map(|b| b.ops.len() as u64)
                .sum::<u64>()
    }
}

struct Builder<'a> {
    plan: &'a LogicalPlan,
    source_partitions: &'a dyn Fn(NodeIndex) -> u32,
    source_bytes: &'a dyn Fn(NodeIndex) -> Option<u64>,
    broadcast_threshold: u64,
    default_shuffle_partitions: Option<u32>,
    limits: PlanLimits,
    stages: Vec<StageDef>,
    /// Per plan node, what its readers start from: the pipeline computing it (for a
    /// shuffle or cache node, the reading side of its map stages).
    built: Vec<Option<Pipeline>>,
    /// Readers of each node not yet served.
    readers: Vec<u32>,
    next_shuffle: u32,
    /// Per shuffle id (in order), its map tasks.
    map_tasks: Vec<u32>,
    /// Operations placed in pipelines so far, copies included.
    ops: u64,
    /// Tasks of the stages pushed so far.
    tasks: u64,
    /// Input pieces allocated so far, copies included: what the stages will hold.
    pieces: u64,
    /// Map outputs × reduce partitions of the shuffles so far.
    blocks: u64,
}

impl Builder<'_> {
    fn count_ops(&mut self, more: u64) -> Result<(), PlanError> {
        self.ops += more;
        if self.ops > self.limits.max_nodes as u64 {
            return Err(PlanError::Limit {
                limit: "driver.max_plan_nodes",
                what: format!(
                    "the job's stages would hold more than {} operations (an input read by several datasets is copied into each)",
                    self.limits.max_nodes
                ),
                max: self.limits.max_nodes as u64,
            });
        }
        Ok(())
    }

    /// `more` input pieces are about to be allocated (a source, a shuffle's reading side,
    /// a copy): the job's stages may hold `max_tasks_per_job` pieces in all.
    fn count_pieces(&mut self, more: u64) -> Result<(), PlanError> {
        self.pieces += more;
        let max = self.limits.max_tasks_per_job as u64;
        if self.pieces > max {
            return Err(PlanError::Limit {
                limit: "driver.max_tasks_per_job",
                what: format!(
                    "the job's stages would read more than {max} input pieces (an input read by several datasets is copied into each)"
                ),
                max,
            });
        }
        Ok(())
    }

    fn check_pieces(&self, pieces: u64, what: &str) -> Result<(), PlanError> {
        let max = self.limits.max_partitions_per_stage as u64;
        if pieces > max {
            return Err(PlanError::Limit {
                limit: "driver.max_partitions_per_stage",
                what: format!("{what} has {pieces} partitions"),
                max,
            });
        }
        Ok(())
    }

    /// The pipeline of `node` for one of its readers: the last reader takes it, the
    /// others get a copy, counted against the limits.
    fn read(&mut self, node: NodeIndex) -> Result<Pipeline, PlanError> {
        self.readers[node] = self.readers[node].saturating_sub(1);
        if self.readers[node] == 0 {
            return Ok(self.built[node].take().expect("parents are built first"));
        }
        let p = self.built[node].as_ref().expect("parents are built first");
        let (ops, branches, pieces) = (p.op_count(), p.branches.len() as u64, p.piece_count());
        self.count_ops(ops + branches)?;
        self.check_pieces(pieces, &format!("a copy of plan node {node}"))?;
        self.count_pieces(pieces)?;
        Ok(self.built[node].clone().expect("checked above"))
    }

    /// Moves the tail into every branch: what follows a union or coalesce must not see
    /// the rows of pieces it did not before.
    fn sink_tail(&mut self, p: &mut Pipeline) -> Result<(), PlanError> {
        let tail = std::mem::take(&mut p.tail);
        if !tail.is_empty() {
            let copies = (p.branches.len() as u64).saturating_sub(1);
            self.count_ops(copies * tail.len() as u64)?;
            for b in &mut p.branches {
                b.ops.extend(tail.iter().cloned());
            }
        }
        Ok(())
    }

    fn push_stage(
        &mut self,
        p: Pipeline,
        output: StageOutput,
        names: Vec<String>,
    ) -> Result<u32, PlanError> {
        let index = self.stages.len() as u32;
        self.tasks += p.pieces.len() as u64;
        let max_tasks = self.limits.max_tasks_per_job as u64;
        if self.tasks > max_tasks {
            return Err(PlanError::Limit {
                limit: "driver.max_tasks_per_job",
                what: format!("the job has more than {max_tasks} tasks"),
                max: max_tasks,
            });
        }
        self.check_task_bytes(&p, index)?;
        let mut parents = p.parents;
        parents.sort_unstable();
        parents.dedup();
        self.stages.push(StageDef {
            index,
            parents,
            partitions: p.pieces.len() as u32,
            branches: p.branches,
            pieces: p.pieces,
            ops: p.tail,
            output,
            name: names.join(" → "),
            builds: Vec::new(),
            after: Vec::new(),
            broadcast: p.broadcast,
        });
        Ok(index)
    }

    /// Bytes a pipeline reads, when it reads only sources of known size.
    fn input_bytes(&self, p: &Pipeline) -> Option<u64> {
        let mut total = 0u64;
        for b in &p.branches {
            match &b.input {
                StageInput::Source { node, .. } => total += (self.source_bytes)(*node)?,
                StageInput::Shuffle { .. } => return None,
            }
        }
        Some(total)
    }

    /// What one piece of `branch` costs a task's descriptor, besides inline rows: its
    /// ops, its input's decoder or reader, and what locates its input (a split's path and
    /// format, or one segment source per map output of each shuffle side).
    fn piece_bytes(&self, branch: &Branch) -> u64 {
        /// A split's path (at most a path's length) and its offsets.
        const SPLIT: u64 = 4096 + 64;
        /// One segment source: executor, address, map partition, size.
        const SEGMENT: u64 = 96;
        let op_bytes = |ops: &[Op]| ops.iter().map(|o| o.arg.len() as u64 + 16).sum::<u64>();
        let input = match &branch.input {
            StageInput::Source { node, decode } => {
                let located = match self.plan.nodes.get(*node) {
                    Some(Node::Files { format, filter, .. }) => {
                        SPLIT
                            + format.size() as u64
                            + filter.iter().map(|p| p.size() as u64).sum::<u64>()
                    }
                    _ => 0,
                };
                decode.arg.len() as u64 + located
            }
            StageInput::Shuffle { shuffles, read, .. } => {
                let maps: u64 = shuffles
                    .iter()
                    .map(|sh| self.map_partitions(*sh) as u64)
                    .sum();
                read.arg.len() as u64 + maps * SEGMENT
            }
        };
        32 + op_bytes(&branch.ops) + input
    }

    /// Map tasks of `shuffle` (made before any stage that reads it).
    fn map_partitions(&self, shuffle: ShuffleId) -> u32 {
        self.map_tasks.get(shuffle.0 as usize).copied().unwrap_or(0)
    }

    /// Each task carries its pieces' ops, inputs and inline rows: the largest must fit a
    /// frame.
    fn check_task_bytes(&self, p: &Pipeline, stage: u32) -> Result<(), PlanError> {
        let op_bytes = |ops: &[Op]| ops.iter().map(|o| o.arg.len() as u64).sum::<u64>();
        let branch_bytes: Vec<u64> = p.branches.iter().map(|b| self.piece_bytes(b)).collect();
        let tail = op_bytes(&p.tail);
        for pieces in &p.pieces {
            let mut bytes = tail;
            for r in pieces {
                bytes += branch_bytes.get(r.branch as usize).copied().unwrap_or(0);
                if let Some(Branch {
                    input: StageInput::Source { node, .. },
                    ..
                }) = p.branches.get(r.branch as usize)
                    && let Some(Node::Inline { partitions, .. }) = self.plan.nodes.get(*node)
                {
                    bytes += partitions
                        .get(r.partition as usize)
                        .map_or(0, |v| v.len() as u64);
                }
            }
            if bytes > MAX_TASK_PLAN_BYTES {
                return Err(PlanError::Limit {
                    limit: "the wire's task size",
                    what: format!(
                        "a task of stage {stage} would carry {bytes} bytes of captured values and inline rows (broadcast large values instead)"
                    ),
                    max: MAX_TASK_PLAN_BYTES,
                });
            }
        }
        Ok(())
    }

    /// The pipeline that computes `node`, from its parents' (already built), pushing the
    /// map stages of a shuffle or cache node.
    fn build(&mut self, node: NodeIndex) -> Result<Pipeline, PlanError> {
        Ok(match &self.plan.nodes[node] {
            Node::Files { format, decode, .. } => {
                let parts = (self.source_partitions)(node);
                self.check_pieces(parts as u64, &format!("the {} source", format.name()))?;
                self.count_pieces(parts as u64)?;
                Pipeline::single(
                    StageInput::Source {
                        node,
                        decode: decode.clone(),
                    },
                    parts,
                    vec![],
                    format.name().to_string(),
                )
            }
            Node::Inline { partitions, decode } => {
                self.count_pieces(partitions.len() as u64)?;
                Pipeline::single(
                    StageInput::Source {
                        node,
                        decode: decode.clone(),
                    },
                    partitions.len() as u32,
                    vec![],
                    "parallelize".to_string(),
                )
            }
            Node::Narrow {
                parent,
                apply,
                name,
            } => {
                let mut p = self.read(*parent)?;
                self.count_ops(1)?;
                p.tail.push(apply.clone());
                p.names.push(name.clone());
                p
            }
            Node::Shuffle {
                sides,
                partitions,
                read,
                name,
                probes,
            } => {
                let requested = *partitions;
                let sides = sides.clone();
                let stages = self.map_stages(node, &sides, requested, None, name.clone())?;
                let candidates = self.broadcast_candidates(&stages, probes);
                let mut p = stages.reading(read, name, requested.is_none());
                p.broadcast = candidates;
                p
            }
            Node::Cache {
                parent,
                id,
                level,
                write,
                read,
            } => {
                let side = [ShuffleSide {
                    parent: *parent,
                    write: write.clone(),
                    keep: None,
                }];
                let key = CacheKey {
                    id: *id,
                    level: *level,
                    shuffle_output: false,
                };
                // A cached partition is read where it is kept, one per task.
                self.map_stages(node, &side, None, Some(key), format!("cache {id}"))?
                    .reading(read, &format!("cached {id}"), false)
            }
            Node::Union { parents } => {
                let mut total = 0u64;
                for parent in parents {
                    total += self.built[*parent]
                        .as_ref()
                        .map_or(0, Pipeline::piece_count);
                }
                self.check_pieces(total, &format!("the union at plan node {node}"))?;
                let mut out = Pipeline {
                    broadcast: vec![],
                    parents: vec![],
                    branches: vec![],
                    pieces: vec![],
                    piece_count: 0,
                    tail: vec![],
                    names: vec![],
                };
                let mut names = Vec::new();
                for parent in parents {
                    let mut p = self.read(*parent)?;
                    self.sink_tail(&mut p)?;
                    let offset = out.branches.len() as u32;
                    out.parents.extend(p.parents);
                    out.branches.extend(p.branches);
                    out.piece_count += p.piece_count;
                    out.pieces.extend(p.pieces.into_iter().map(|ps| {
                        ps.into_iter()
                            .map(|r| PieceRef {
                                branch: r.branch + offset,
                                ..r
                            })
                            .collect()
                    }));
                    names.push(p.names.join(" → "));
                }
                out.names = vec![format!("union({})", names.join(" | "))];
                out
            }
            Node::Coalesce { parent, partitions } => {
                let mut p = self.read(*parent)?;
                let n = (*partitions as usize).min(p.pieces.len()).max(1);
                if n < p.pieces.len() {
                    // A stage reading several partitions per task is no join of one.
                    p.broadcast.clear();
                    self.sink_tail(&mut p)?;
                    let all = std::mem::take(&mut p.pieces);
                    let len = all.len();
                    // Group i takes pieces [i*len/n, (i+1)*len/n): sizes differ by one at most.
                    let mut groups: Vec<Vec<PieceRef>> = vec![Vec::new(); n];
                    for (i, piece) in all.into_iter().enumerate() {
                        groups[i * n / len].extend(piece);
                    }
                    p.pieces = groups;
                }
                p.names.push(format!("coalesce({partitions})"));
                p
            }
        })
    }

    /// The map stages of shuffle or cache node `node`, one per side.
    fn map_stages(
        &mut self,
        node: NodeIndex,
        sides: &[ShuffleSide],
        requested: Option<u32>,
        cache: Option<CacheKey>,
        name: String,
    ) -> Result<MapStages, PlanError> {
        // What the sides would cost, checked before any side is read (copied).
        let mut side_pieces = 0u64;
        for side in sides {
            side_pieces += self.built[side.parent]
                .as_ref()
                .map_or(0, Pipeline::piece_count);
        }
        let max_tasks = self.limits.max_tasks_per_job as u64;
        if self.tasks + side_pieces > max_tasks {
            return Err(PlanError::Limit {
                limit: "driver.max_tasks_per_job",
                what: format!(
                    "the shuffle at plan node {node} would have more than {max_tasks} map tasks"
                ),
                max: max_tasks,
            });
        }
        let mut pipelines = Vec::with_capacity(sides.len());
        for side in sides {
            pipelines.push(self.read(side.parent)?);
        }
        let estimates: Vec<Option<u64>> = pipelines.iter().map(|p| self.input_bytes(p)).collect();
        let widest = pipelines.iter().map(|p| p.pieces.len() as u32).max();
        let partitions = if cache.is_some() {
            widest.unwrap_or(1).max(1)
        } else {
            requested
                .or(self.default_shuffle_partitions)
                .or(widest)
                .unwrap_or(1)
                .max(1)
        };
        self.check_pieces(
            partitions as u64,
            &format!("the shuffle at plan node {node}"),
        )?;
        let maps: u64 = pipelines.iter().map(|p| p.pieces.len() as u64).sum();
        self.blocks += maps * partitions as u64;
        let max_blocks = self.limits.max_shuffle_blocks;
        if self.blocks > max_blocks {
            return Err(PlanError::Limit {
                limit: "driver.max_shuffle_blocks",
                what: format!(
                    "the job's shuffles have more than {max_blocks} map outputs × reduce partitions ({maps} × {partitions} at plan node {node})"
                ),
                max: max_blocks,
            });
        }
        self.count_pieces(partitions as u64)?;
        let mut stages = Vec::new();
        let mut ids = Vec::new();
        for (side, p) in sides.iter().zip(pipelines) {
            let shuffle = ShuffleId(self.next_shuffle);
            self.next_shuffle += 1;
            self.map_tasks.push(p.pieces.len() as u32);
            let mut names = p.names.clone();
            names.push(format!("{name} (write)"));
            // A shuffle's map output the program keeps for later jobs is filed as its
            // cached datasets are (on disk: it is a shuffle's files).
            let kept = side.keep.map(|id| CacheKey {
                id,
                level: StorageLevel::DiskOnly,
                shuffle_output: true,
            });
            let stage = self.push_stage(
                p,
                StageOutput::ShuffleWrite {
                    shuffle,
                    partitions,
                    write: side.write.clone(),
                    cache: cache.or(kept),
                },
                names,
            )?;
            stages.push(stage);
            ids.push(shuffle);
        }
        Ok(MapStages {
            stages,
            shuffles: ids,
            partitions,
            estimates,
        })
    }

    /// The ways a join may become a broadcast hash join (which also say which side's
    /// skewed partitions may be split). When one side reads sources of at most the
    /// threshold and the other reads more, the larger side's map stage waits for the
    /// smaller one's (`after`): if that output proves small, the larger side is never
    /// shuffled.
    fn broadcast_candidates(
        &mut self,
        m: &MapStages,
        probes: &[JoinProbe],
    ) -> Vec<BroadcastCandidate> {
        if m.stages.len() != 2 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for p in probes {
            let (stream, build) = match p.stream {
                0 => (0, 1),
                1 => (1, 0),
                _ => continue,
            };
            out.push(BroadcastCandidate {
                stream_stage: m.stages[stream],
                build_stage: m.stages[build],
                build_shuffle: m.shuffles[build],
                probe: p.probe.clone(),
            });
            if let (Some(small), Some(large)) = (m.estimates[build], m.estimates[stream])
                && self.broadcast_threshold > 0
                && small <= self.broadcast_threshold
                && large > small
            {
                let held = &mut self.stages[m.stages[stream] as usize].after;
                if !held.contains(&m.stages[build]) {
                    held.push(m.stages[build]);
                }
            }
        }
        out
    }
}

/// The map stages of a shuffle, for the stage that reads them.
struct MapStages {
    stages: Vec<u32>,
    shuffles: Vec<ShuffleId>,
    partitions: u32,
    /// Per side, the bytes its inputs read, when known.
    estimates: Vec<Option<u64>>,
}

impl MapStages {
    /// The start of the stage that reads them with `read`; `coalesce` when the partition
    /// count was not asked for.
    fn reading(self, read: &Op, name: &str, coalesce: bool) -> Pipeline {
        Pipeline::single(
            StageInput::Shuffle {
                shuffles: self.shuffles,
                read: read.clone(),
                coalesce,
            },
            self.partitions,
            self.stages,
            format!("{name} (read)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FnRef, Malformed, ReadFormat, WriteFormat};

    fn op(f: u32) -> Op {
        Op::bare(f)
    }

    fn text(path: &str) -> Node {
        Node::Files {
            paths: vec![path.into()],
            format: ReadFormat::Text,
            min_partitions: 2,
            malformed: Malformed::Fail,
            filter: vec![],
            decode: op(1),
        }
    }

    fn shuffle(parents: &[usize], partitions: Option<u32>, read: u32) -> Node {
        Node::Shuffle {
            sides: parents
                .iter()
                .map(|p| ShuffleSide {
                    parent: *p,
                    write: op(40 + *p as u32),
                    keep: None,
                })
                .collect(),
            partitions,
            read: op(read),
            name: "reduce_by_key".into(),
            probes: vec![],
        }
    }

    fn wordcount_plan() -> LogicalPlan {
        LogicalPlan {
            nodes: vec![
                text("in"),
                Node::Narrow {
                    parent: 0,
                    apply: op(2),
                    name: "flat_map".into(),
                },
                Node::Narrow {
                    parent: 1,
                    apply: op(3),
                    name: "map".into(),
                },
                shuffle(&[2], None, 5),
            ],
            action: Action::Save {
                path: "out".into(),
                format: WriteFormat::Text,
                render: op(6),
                options: Default::default(),
            },
        }
    }

    #[test]
    fn narrow_ops_fuse_and_shuffle_cuts_a_stage() {
        let dag = build_dag(&wordcount_plan(), &|_| 5, None, &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages.len(), 2);
        let map = &dag.stages[0];
        assert_eq!(
            map.branches[0].input,
            StageInput::Source {
                node: 0,
                decode: op(1)
            }
        );
        assert_eq!(map.ops, vec![op(2), op(3)]);
        assert_eq!(map.partitions, 5);
        assert_eq!(
            map.output,
            StageOutput::ShuffleWrite {
                shuffle: ShuffleId(0),
                partitions: 5,
                write: op(42),
                cache: None,
            }
        );
        assert_eq!(
            map.name,
            "text_file → flat_map → map → reduce_by_key (write)"
        );
        let result = &dag.stages[1];
        assert_eq!(result.parents, vec![0]);
        assert_eq!(
            result.branches[0].input,
            StageInput::Shuffle {
                shuffles: vec![ShuffleId(0)],
                read: op(5),
                coalesce: true,
            }
        );
        assert!(result.ops.is_empty());
        assert_eq!(result.partitions, 5);
        assert!(matches!(
            result.output,
            StageOutput::Result(Action::Save { .. })
        ));
    }

    #[test]
    fn take_reads_in_rounds_only_where_a_round_recomputes_no_shuffle() {
        let take = Action::Collect {
            encode: op(9),
            limit: Some(10),
        };
        // text → filter: a round reads its own splits only.
        let narrow = LogicalPlan {
            nodes: vec![
                text("in"),
                Node::Narrow {
                    parent: 0,
                    apply: op(2),
                    name: "filter".into(),
                },
            ],
            action: take.clone(),
        };
        let dag = build_dag(&narrow, &|_| 6, None, &PlanLimits::default()).unwrap();
        assert!(dag.result_reads_cheaply());
        let round = dag.with_result_partitions(1..5);
        assert_eq!(round.result_stage().partitions, 4);
        assert_eq!(
            round.result_stage().pieces,
            (1..5)
                .map(|p| vec![PieceRef::whole(0, p)])
                .collect::<Vec<_>>()
        );
        // A range past the end is cut to what there is.
        assert_eq!(
            dag.with_result_partitions(4..99).result_stage().partitions,
            2
        );

        // Over a cached dataset: the cache is computed once, rounds read it.
        let mut cached = narrow.clone();
        cached.nodes.push(Node::Cache {
            parent: 1,
            id: 1,
            level: crate::plan::StorageLevel::MemoryOnly,
            write: op(5),
            read: op(6),
        });
        assert!(
            build_dag(&cached, &|_| 6, None, &PlanLimits::default())
                .unwrap()
                .result_reads_cheaply()
        );

        // After a shuffle that is not cached, each round would rerun its map stage.
        let mut wide = wordcount_plan();
        wide.action = take;
        assert!(
            !build_dag(&wide, &|_| 6, None, &PlanLimits::default())
                .unwrap()
                .result_reads_cheaply()
        );
    }

    #[test]
    fn take_rounds_grow_as_spark_does() {
        // One partition first.
        assert_eq!(take_round(10, 0, 0), 1);
        // Nothing found: four times as many as were read.
        assert_eq!(take_round(10, 0, 1), 4);
        assert_eq!(take_round(10, 0, 5), 20);
        // 2 rows in 1 partition, 10 wanted: 1.5 × 10 / 2 = 7.5 → 7 partitions in all,
        // capped at 4 more.
        assert_eq!(take_round(10, 2, 1), 4);
        // 8 rows in 4 partitions: 1.5 × 10 × 4 / 8 = 7.5 → 7, so 3 more.
        assert_eq!(take_round(10, 8, 4), 3);
        // Plenty found already (the caller stops), still at least one.
        assert_eq!(take_round(10, 1000, 4), 1);
    }

    #[test]
    fn shuffle_partitions_come_from_node_then_conf_then_map_side() {
        let mut plan = wordcount_plan();
        let dag = build_dag(&plan, &|_| 5, Some(7), &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages[1].partitions, 7);
        if let Node::Shuffle { partitions, .. } = &mut plan.nodes[3] {
            *partitions = Some(3);
        }
        let dag = build_dag(&plan, &|_| 5, Some(7), &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages[1].partitions, 3);
    }

    #[test]
    fn two_shuffles_make_three_stages_in_dependency_order() {
        let mut plan = wordcount_plan();
        plan.nodes.push(Node::Narrow {
            parent: 3,
            apply: op(7),
            name: "map".into(),
        });
        plan.nodes.push(shuffle(&[4], Some(2), 9));
        plan.action = Action::Count;
        let dag = build_dag(&plan, &|_| 4, None, &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages.len(), 3);
        assert_eq!(dag.stages[1].parents, vec![0]);
        assert_eq!(dag.stages[1].ops, vec![op(7)]);
        assert!(matches!(
            dag.stages[1].output,
            StageOutput::ShuffleWrite {
                shuffle: ShuffleId(1),
                partitions: 2,
                ..
            }
        ));
        assert_eq!(dag.stages[2].parents, vec![1]);
        assert_eq!(dag.stages[2].partitions, 2);
    }

    #[test]
    fn a_join_shuffles_both_sides_into_one_reading_stage() {
        let plan = LogicalPlan {
            nodes: vec![text("a"), text("b"), shuffle(&[0, 1], None, 9)],
            action: Action::Count,
        };
        let splits = |n: NodeIndex| if n == 0 { 3 } else { 5 };
        let dag = build_dag(&plan, &splits, None, &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages.len(), 3);
        // Both sides write as many partitions as the wider side has.
        for (s, maps) in [(0, 3), (1, 5)] {
            assert_eq!(dag.stages[s].partitions, maps);
            assert!(matches!(
                dag.stages[s].output,
                StageOutput::ShuffleWrite { partitions: 5, .. }
            ));
        }
        let join = &dag.stages[2];
        assert_eq!(join.parents, vec![0, 1]);
        assert_eq!(
            join.reads().collect::<Vec<_>>(),
            vec![ShuffleId(0), ShuffleId(1)]
        );
        assert_eq!(join.partitions, 5);
    }

    /// `a` joined with `b` (inner: either side may be broadcast), a map after the join,
    /// then a count.
    fn join_plan() -> LogicalPlan {
        let mut join = shuffle(&[0, 1], None, 9);
        if let Node::Shuffle { probes, name, .. } = &mut join {
            *name = "join".into();
            *probes = vec![
                JoinProbe {
                    stream: 0,
                    probe: Op {
                        arg: vec![7, 7].into(),
                        ..op(20)
                    },
                },
                JoinProbe {
                    stream: 1,
                    probe: op(21),
                },
            ];
        }
        LogicalPlan {
            nodes: vec![
                text("a"),
                text("b"),
                join,
                Node::Narrow {
                    parent: 2,
                    apply: op(7),
                    name: "map".into(),
                },
            ],
            action: Action::Count,
        }
    }

    #[test]
    fn the_large_side_of_a_join_waits_for_a_small_one() {
        let splits = |n: NodeIndex| if n == 0 { 4 } else { 1 };
        let bytes = |n: NodeIndex| Some(if n == 0 { 90 << 20 } else { 1 << 20 });
        let inputs = |threshold| DagInputs {
            source_partitions: &splits,
            source_bytes: &bytes,
            default_shuffle_partitions: None,
            broadcast_threshold: threshold,
        };
        let dag = build_dag_with(&join_plan(), &inputs(10 << 20), &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages[0].after, vec![1], "the 90 MiB side waits");
        assert!(dag.stages[1].after.is_empty());
        let join = &dag.stages[2];
        assert_eq!(join.broadcast.len(), 2);
        assert_eq!(join.broadcast[0].stream_stage, 0);
        assert_eq!(join.broadcast[0].build_stage, 1);
        assert_eq!(join.broadcast[0].build_shuffle, ShuffleId(1));
        // Both sides over the threshold, or adaptive execution off: nothing waits.
        let big = build_dag_with(&join_plan(), &inputs(512 << 10), &PlanLimits::default()).unwrap();
        assert!(big.stages.iter().all(|s| s.after.is_empty()));
        let off = build_dag_with(&join_plan(), &inputs(0), &PlanLimits::default()).unwrap();
        assert!(off.stages.iter().all(|s| s.after.is_empty()));
    }

    #[test]
    fn a_broadcast_join_absorbs_the_streamed_side_into_the_join_stage() {
        let splits = |n: NodeIndex| if n == 0 { 4 } else { 1 };
        let bytes = |n: NodeIndex| Some(if n == 0 { 90 << 20 } else { 1 << 20 });
        let inputs = DagInputs {
            source_partitions: &splits,
            source_bytes: &bytes,
            default_shuffle_partitions: Some(8),
            broadcast_threshold: 10 << 20,
        };
        let mut dag = build_dag_with(&join_plan(), &inputs, &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages[2].partitions, 8);
        let change = dag.broadcast_join(2, 0, 1234).expect("a candidate");
        assert!(
            change.contains("stage 2 is a broadcast hash join"),
            "{change}"
        );
        assert!(change.contains("1234 bytes"), "{change}");
        let absorbed = &dag.stages[0];
        assert_eq!(absorbed.partitions, 0);
        assert!(absorbed.pieces.is_empty());
        let join = &dag.stages[2];
        // It reads what the streamed side read, with its tasks...
        assert_eq!(join.partitions, 4);
        assert_eq!(join.branches, dag_source_branch());
        assert_eq!(join.parents, vec![1], "it waits for the build side only");
        assert_eq!(join.builds, vec![ShuffleId(1)]);
        assert_eq!(join.reads().collect::<Vec<_>>(), vec![ShuffleId(1)]);
        // ...and runs the probe (told build side 0, then its own captured value) before
        // the join's own ops.
        let mut probe = op(20);
        probe.arg = vec![0, 0, 0, 0, 7, 7].into();
        assert_eq!(join.ops, vec![probe, op(7)]);
        assert!(
            join.name.contains("join (broadcast hash join of stage 1)"),
            "{}",
            join.name
        );
        assert!(join.broadcast.is_empty());
        assert!(matches!(join.output, StageOutput::Result(Action::Count)));
    }

    /// One side, one map output of these partition sizes.
    fn one_map(sizes: &[u64]) -> Vec<Vec<Vec<u64>>> {
        vec![vec![sizes.to_vec()]]
    }

    #[test]
    fn coalescing_groups_consecutive_small_partitions_up_to_the_target() {
        let mut dag =
            build_dag(&wordcount_plan(), &|_| 5, Some(6), &PlanLimits::default()).unwrap();
        let sizes = [10, 20, 70, 5, 5, 200];
        let change = dag
            .plan_reads(1, &one_map(&sizes), 100, None)
            .expect("something to coalesce");
        assert!(
            change.contains("6 shuffle partitions (310 bytes) in 3 tasks"),
            "{change}"
        );
        let piece = |partition| PieceRef::whole(0, partition);
        // 10+20+70 | 5+5 (200 would overflow) | 200 alone, over the target.
        assert_eq!(
            dag.stages[1].pieces,
            vec![
                vec![piece(0), piece(1), piece(2)],
                vec![piece(3), piece(4)],
                vec![piece(5)]
            ]
        );
        assert_eq!(dag.stages[1].partitions, 3);
        // Once re-planned, or with nothing to gain, it stays as it is.
        assert!(dag.plan_reads(1, &one_map(&[1, 1, 1]), 100, None).is_none());
        let mut fresh =
            build_dag(&wordcount_plan(), &|_| 5, Some(2), &PlanLimits::default()).unwrap();
        assert!(
            fresh
                .plan_reads(1, &one_map(&[500, 500]), 100, None)
                .is_none()
        );
        // A partition count the job asked for is kept.
        let mut plan = wordcount_plan();
        if let Node::Shuffle { partitions, .. } = &mut plan.nodes[3] {
            *partitions = Some(6);
        }
        let mut asked = build_dag(&plan, &|_| 5, None, &PlanLimits::default()).unwrap();
        assert!(asked.plan_reads(1, &one_map(&sizes), 100, None).is_none());
    }

    #[test]
    fn a_skewed_join_partition_is_split_by_the_streamed_side_s_map_outputs() {
        let splits = |n: NodeIndex| if n == 0 { 4 } else { 1 };
        let inputs = DagInputs {
            source_partitions: &splits,
            source_bytes: &|_| None,
            default_shuffle_partitions: Some(4),
            broadcast_threshold: 0,
        };
        let mut dag = build_dag_with(&join_plan(), &inputs, &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages[2].broadcast.len(), 2, "sides that may be split");
        // Side 0: 4 map outputs; partition 2 holds 4 × 300 bytes, the others 10 each.
        // Side 1: 1 map output of 5 bytes a partition.
        let left = vec![vec![10, 10, 300, 10]; 4];
        let right = vec![vec![5, 5, 5, 5]];
        let skew = Skew {
            factor: 5.0,
            min_bytes: 100,
        };
        let change = dag
            .plan_reads(2, &[left.clone(), right.clone()], 600, Some(skew))
            .expect("a skewed partition");
        assert!(
            change.contains("skewed partition 2 (1200 bytes of side 0"),
            "{change}"
        );
        let share = |start, end| PieceRef {
            branch: 0,
            partition: 2,
            maps: Some(MapRange {
                side: 0,
                start,
                end,
            }),
        };
        assert_eq!(
            dag.stages[2].pieces,
            vec![
                vec![PieceRef::whole(0, 0), PieceRef::whole(0, 1)],
                vec![share(0, 2)],
                vec![share(2, 4)],
                vec![PieceRef::whole(0, 3)],
            ]
        );
        // Below the size floor nothing is split.
        let mut small = build_dag_with(&join_plan(), &inputs, &PlanLimits::default()).unwrap();
        let floor = Skew {
            factor: 5.0,
            min_bytes: 2000,
        };
        let change = small.plan_reads(2, &[left, right], 600, Some(floor));
        assert!(change.is_none_or(|c| !c.contains("skewed")));
    }

    /// The branch a `text("a")` source stage reads.
    fn dag_source_branch() -> Vec<Branch> {
        vec![Branch {
            input: StageInput::Source {
                node: 0,
                decode: op(1),
            },
            ops: vec![],
            partitions: 4,
        }]
    }

    #[test]
    fn union_concatenates_and_coalesce_groups_without_a_shuffle() {
        let plan = LogicalPlan {
            nodes: vec![
                text("a"),
                Node::Narrow {
                    parent: 0,
                    apply: op(2),
                    name: "map".into(),
                },
                text("b"),
                Node::Union {
                    parents: vec![1, 2],
                },
                Node::Coalesce {
                    parent: 3,
                    partitions: 2,
                },
                Node::Narrow {
                    parent: 4,
                    apply: op(3),
                    name: "map_partitions".into(),
                },
            ],
            action: Action::Count,
        };
        let splits = |n: NodeIndex| if n == 0 { 2 } else { 3 };
        let dag = build_dag(&plan, &splits, None, &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages.len(), 1);
        let s = &dag.stages[0];
        assert_eq!(s.branches.len(), 2);
        // The map before the union applies to its own branch only.
        assert_eq!(s.branches[0].ops, vec![op(2)]);
        assert!(s.branches[1].ops.is_empty());
        assert_eq!(s.ops, vec![op(3)]);
        let piece = PieceRef::whole;
        assert_eq!(
            s.pieces,
            vec![
                vec![piece(0, 0), piece(0, 1), piece(1, 0)],
                vec![piece(1, 1), piece(1, 2)],
            ]
        );
        assert_eq!(s.partitions, 2);
    }

    #[test]
    fn a_shuffle_read_twice_is_built_once() {
        let plan = LogicalPlan {
            nodes: vec![
                text("a"),
                shuffle(&[0], Some(2), 5),
                Node::Union {
                    parents: vec![1, 1],
                },
            ],
            action: Action::Count,
        };
        let dag = build_dag(&plan, &|_| 3, None, &PlanLimits::default()).unwrap();
        assert_eq!(dag.stages.len(), 2);
        assert_eq!(dag.stages[1].partitions, 4);
        assert_eq!(dag.stages[1].parents, vec![0]);
    }

    #[test]
    fn forward_parent_is_rejected() {
        let plan = LogicalPlan {
            nodes: vec![Node::Narrow {
                parent: 0,
                apply: Op {
                    func: FnRef(1),
                    arg: Vec::new().into(),
                },
                name: "map".into(),
            }],
            action: Action::Count,
        };
        assert_eq!(
            build_dag(&plan, &|_| 1, None, &PlanLimits::default()).unwrap_err(),
            PlanError::BadParent { node: 0, parent: 0 }
        );
    }

    /// The error of a plan that must be refused (an accepted DAG is too big to print).
    fn refused(r: Result<JobDag, PlanError>) -> PlanError {
        match r {
            Ok(_) => panic!("the plan was accepted"),
            Err(e) => e,
        }
    }

    fn narrow(parent: usize) -> Node {
        Node::Narrow {
            parent,
            apply: op(2),
            name: "map".into(),
        }
    }

    #[test]
    fn a_long_chain_is_built_without_recursion_and_bounded_by_depth() {
        // 100 000 maps: far deeper than any native stack would take one frame each.
        let mut nodes = vec![text("in")];
        nodes.extend((0..100_000).map(narrow));
        let plan = LogicalPlan {
            nodes,
            action: Action::Count,
        };
        let roomy = PlanLimits {
            max_nodes: 1_000_000,
            max_depth: 1_000_000,
            ..Default::default()
        };
        let dag = build_dag(&plan, &|_| 1, None, &roomy).unwrap();
        assert_eq!(dag.stages[0].ops.len(), 100_000);
        let e = refused(build_dag(&plan, &|_| 1, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("driver.max_plan_nodes"), "{e}");
        let e = refused(build_dag(
            &plan,
            &|_| 1,
            None,
            &PlanLimits {
                max_nodes: 1_000_000,
                ..Default::default()
            },
        ));
        assert_eq!(e.limit(), Some("driver.max_plan_depth"), "{e}");
    }

    #[test]
    fn a_dataset_unioned_with_itself_is_refused_before_it_is_built() {
        // d = d.union(d), 40 times: 2^40 partitions if expanded.
        let mut nodes = vec![text("in")];
        for i in 0..40 {
            nodes.push(Node::Union {
                parents: vec![i, i],
            });
        }
        let plan = LogicalPlan {
            nodes,
            action: Action::Count,
        };
        let e = refused(build_dag(&plan, &|_| 2, None, &PlanLimits::default()));
        // Each copy's branches count as operations: 2^14 branches pass the bound long
        // before 2^17 partitions would.
        assert_eq!(e.limit(), Some("driver.max_plan_nodes"), "{e}");
        // With room for operations, the partitions bound holds.
        let roomy = PlanLimits {
            max_nodes: u32::MAX,
            ..Default::default()
        };
        let e = refused(build_dag(&plan, &|_| 2, None, &roomy));
        assert_eq!(e.limit(), Some("driver.max_partitions_per_stage"), "{e}");
        assert!(e.to_string().contains("131072 partitions"), "{e}");
    }

    #[test]
    fn partition_counts_are_bounded_before_anything_is_allocated() {
        let mut plan = wordcount_plan();
        if let Node::Shuffle { partitions, .. } = &mut plan.nodes[3] {
            *partitions = Some(4_000_000_000);
        }
        let e = refused(build_dag(&plan, &|_| 5, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("driver.max_partitions_per_stage"), "{e}");
        assert!(e.to_string().contains("4000000000"), "{e}");
        // From the settings too, and from a source's splits.
        let plan = wordcount_plan();
        let e = refused(build_dag(
            &plan,
            &|_| 5,
            Some(3_000_000),
            &PlanLimits::default(),
        ));
        assert_eq!(e.limit(), Some("driver.max_partitions_per_stage"), "{e}");
        let e = refused(build_dag(&plan, &|_| 200_000, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("driver.max_partitions_per_stage"), "{e}");
        // Tasks over all stages.
        let few = PlanLimits {
            max_tasks_per_job: 9,
            ..Default::default()
        };
        let e = refused(build_dag(&plan, &|_| 5, None, &few));
        assert_eq!(e.limit(), Some("driver.max_tasks_per_job"), "{e}");
    }

    #[test]
    fn copies_of_a_shared_input_count_against_the_operations_bound() {
        // One map chain read by 30 unions of itself: each reader gets a copy.
        let mut nodes = vec![text("in")];
        nodes.extend((0..300).map(narrow));
        let shared = nodes.len() - 1;
        nodes.push(Node::Union {
            parents: vec![shared; 40],
        });
        let plan = LogicalPlan {
            nodes,
            action: Action::Count,
        };
        let e = refused(build_dag(&plan, &|_| 1, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("driver.max_plan_nodes"), "{e}");
        let roomy = PlanLimits {
            max_nodes: 100_000,
            ..Default::default()
        };
        let dag = build_dag(&plan, &|_| 1, None, &roomy).unwrap();
        assert_eq!(dag.stages[0].branches.len(), 40);
        assert!(dag.stages[0].branches.iter().all(|b| b.ops.len() == 300));
    }

    #[test]
    fn a_task_that_would_not_fit_a_frame_is_refused() {
        let big = Op {
            func: FnRef(2),
            arg: vec![0u8; 100 << 20].into(),
        };
        let plan = LogicalPlan {
            nodes: vec![
                text("a"),
                Node::Narrow {
                    parent: 0,
                    apply: big,
                    name: "map_with".into(),
                },
                Node::Union {
                    parents: vec![1, 1],
                },
                Node::Coalesce {
                    parent: 2,
                    partitions: 1,
                },
            ],
            action: Action::Count,
        };
        let e = refused(build_dag(&plan, &|_| 1, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("the wire's task size"), "{e}");
    }

    #[test]
    fn a_source_read_by_thousands_of_sides_is_refused_before_its_copies_are_made() {
        // 100 000 empty inline partitions, read by 9 000 sides of one shuffle: a tiny
        // plan that would copy 900 million pieces.
        let plan = LogicalPlan {
            nodes: vec![
                Node::Inline {
                    partitions: vec![Vec::new(); 100_000],
                    decode: op(1),
                },
                Node::Shuffle {
                    sides: (0..9000)
                        .map(|_| ShuffleSide {
                            parent: 0,
                            write: op(2),
                            keep: None,
                        })
                        .collect(),
                    partitions: Some(1),
                    read: op(3),
                    name: "cogroup".into(),
                    probes: vec![],
                },
            ],
            action: Action::Count,
        };
        let e = refused(build_dag(&plan, &|_| 0, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("driver.max_tasks_per_job"), "{e}");
        // Narrows reading it (no shuffle): counted as they are copied, so at most the
        // bound's worth is built (a small bound keeps the test quick).
        let mut nodes = vec![Node::Inline {
            partitions: vec![Vec::new(); 10_000],
            decode: op(1),
        }];
        nodes.extend((0..20).map(|_| narrow(0)));
        nodes.push(Node::Union {
            parents: (1..21).collect(),
        });
        let plan = LogicalPlan {
            nodes,
            action: Action::Count,
        };
        let small = PlanLimits {
            max_tasks_per_job: 50_000,
            ..Default::default()
        };
        let e = refused(build_dag(&plan, &|_| 0, None, &small));
        assert_eq!(e.limit(), Some("driver.max_tasks_per_job"), "{e}");
    }

    #[test]
    fn what_every_piece_carries_counts_toward_a_task_s_size() {
        // A decoder that captured 3 KiB, 100 000 partitions, coalesced into one task.
        let plan = LogicalPlan {
            nodes: vec![
                Node::Inline {
                    partitions: vec![Vec::new(); 100_000],
                    decode: Op {
                        func: FnRef(1),
                        arg: vec![0u8; 3 << 10].into(),
                    },
                },
                Node::Coalesce {
                    parent: 0,
                    partitions: 1,
                },
            ],
            action: Action::Count,
        };
        let e = refused(build_dag(&plan, &|_| 0, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("the wire's task size"), "{e}");
    }

    #[test]
    fn map_outputs_times_reduce_partitions_are_bounded() {
        let mut plan = wordcount_plan();
        if let Node::Shuffle { partitions, .. } = &mut plan.nodes[3] {
            *partitions = Some(50_000);
        }
        let e = refused(build_dag(&plan, &|_| 50_000, None, &PlanLimits::default()));
        assert_eq!(e.limit(), Some("driver.max_shuffle_blocks"), "{e}");
    }
}
