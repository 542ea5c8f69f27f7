//! Cutting a [`LogicalPlan`] into stages at shuffle boundaries (the DAG scheduler's
//! planning half). Narrow nodes fuse into the stage of their parent; each shuffle ends a
//! map stage and starts a new one that reads it.

use crate::ids::ShuffleId;
use crate::plan::{Action, FnRef, LogicalPlan, Node, NodeIndex, PlanError};
use serde::{Deserialize, Serialize};

/// Where a stage's tasks get their rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageInput {
    /// Splits of the text source at plan node `node`.
    TextFile { node: NodeIndex, decode: FnRef },
    /// The reduce side of a shuffle written by a parent stage.
    Shuffle { shuffle: ShuffleId, read: FnRef },
}

/// What a stage's tasks produce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StageOutput {
    /// Map side of a shuffle: one segment per reduce partition.
    ShuffleWrite {
        shuffle: ShuffleId,
        partitions: u32,
        write: FnRef,
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
    pub input: StageInput,
    /// Narrow functions applied in order, fused.
    pub ops: Vec<FnRef>,
    pub output: StageOutput,
    pub partitions: u32,
    /// Human-readable pipeline, e.g. `text_file → flat_map → map → reduce_by_key`.
    pub name: String,
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
}

/// Builds the stage DAG.
///
/// `source_partitions(node)` says how many splits a source node has (the driver lists
/// files to know); `default_shuffle_partitions` applies where a shuffle names no count
/// (`None`: as many as the map side has, Spark's RDD default).
pub fn build_dag(
    plan: &LogicalPlan,
    source_partitions: &dyn Fn(NodeIndex) -> u32,
    default_shuffle_partitions: Option<u32>,
) -> Result<JobDag, PlanError> {
    plan.validate()?;
    let mut b = Builder {
        plan,
        source_partitions,
        default_shuffle_partitions,
        stages: Vec::new(),
    };
    b.stage_ending_at(plan.root(), StageOutputKind::Result)?;
    Ok(JobDag { stages: b.stages })
}

enum StageOutputKind {
    Result,
    Shuffle { node: NodeIndex },
}

struct Builder<'a> {
    plan: &'a LogicalPlan,
    source_partitions: &'a dyn Fn(NodeIndex) -> u32,
    default_shuffle_partitions: Option<u32>,
    stages: Vec<StageDef>,
}

impl Builder<'_> {
    /// Builds (parents first) the stage whose pipeline ends at `last`, returns its index.
    fn stage_ending_at(
        &mut self,
        last: NodeIndex,
        kind: StageOutputKind,
    ) -> Result<u32, PlanError> {
        // Walk up through narrow nodes to the stage's input.
        let mut ops = Vec::new();
        let mut names = Vec::new();
        let mut cur = last;
        let (input, parents, partitions) = loop {
            match &self.plan.nodes[cur] {
                Node::Narrow {
                    parent,
                    apply,
                    name,
                } => {
                    ops.push(*apply);
                    names.push(name.clone());
                    cur = *parent;
                }
                Node::TextFile { decode, .. } => {
                    names.push("text_file".to_string());
                    let n = (self.source_partitions)(cur);
                    break (
                        StageInput::TextFile {
                            node: cur,
                            decode: *decode,
                        },
                        vec![],
                        n,
                    );
                }
                Node::Shuffle {
                    parent, read, name, ..
                } => {
                    names.push(format!("{name} (read)"));
                    let parent_stage =
                        self.stage_ending_at(*parent, StageOutputKind::Shuffle { node: cur })?;
                    let StageOutput::ShuffleWrite {
                        shuffle,
                        partitions,
                        ..
                    } = self.stages[parent_stage as usize].output
                    else {
                        unreachable!("a shuffle's parent stage writes that shuffle")
                    };
                    break (
                        StageInput::Shuffle {
                            shuffle,
                            read: *read,
                        },
                        vec![parent_stage],
                        partitions,
                    );
                }
            }
        };
        ops.reverse();
        names.reverse();
        let output = match kind {
            StageOutputKind::Result => {
                names.push(self.plan.action.name().to_string());
                StageOutput::Result(self.plan.action.clone())
            }
            StageOutputKind::Shuffle { node } => {
                let Node::Shuffle {
                    partitions: requested,
                    write,
                    name,
                    ..
                } = &self.plan.nodes[node]
                else {
                    unreachable!("shuffle stages end at shuffle nodes")
                };
                names.push(format!("{name} (write)"));
                let shuffle = ShuffleId(
                    self.stages
                        .iter()
                        .filter(|s| matches!(s.output, StageOutput::ShuffleWrite { .. }))
                        .count() as u32,
                );
                StageOutput::ShuffleWrite {
                    shuffle,
                    partitions: requested
                        .or(self.default_shuffle_partitions)
                        .unwrap_or(partitions)
                        .max(1),
                    write: *write,
                }
            }
        };
        let index = self.stages.len() as u32;
        self.stages.push(StageDef {
            index,
            parents,
            input,
            ops,
            output,
            partitions,
            name: names.join(" → "),
        });
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wordcount_plan() -> LogicalPlan {
        LogicalPlan {
            nodes: vec![
                Node::TextFile {
                    paths: vec!["in".into()],
                    min_partitions: 2,
                    decode: FnRef(1),
                },
                Node::Narrow {
                    parent: 0,
                    apply: FnRef(2),
                    name: "flat_map".into(),
                },
                Node::Narrow {
                    parent: 1,
                    apply: FnRef(3),
                    name: "map".into(),
                },
                Node::Shuffle {
                    parent: 2,
                    partitions: None,
                    write: FnRef(4),
                    read: FnRef(5),
                    name: "reduce_by_key".into(),
                },
            ],
            action: Action::SaveAsText {
                path: "out".into(),
                render: FnRef(6),
            },
        }
    }

    #[test]
    fn narrow_ops_fuse_and_shuffle_cuts_a_stage() {
        let dag = build_dag(&wordcount_plan(), &|_| 5, None).unwrap();
        assert_eq!(dag.stages.len(), 2);
        let map = &dag.stages[0];
        assert_eq!(
            map.input,
            StageInput::TextFile {
                node: 0,
                decode: FnRef(1)
            }
        );
        assert_eq!(map.ops, vec![FnRef(2), FnRef(3)]);
        assert_eq!(map.partitions, 5);
        assert_eq!(
            map.output,
            StageOutput::ShuffleWrite {
                shuffle: ShuffleId(0),
                partitions: 5,
                write: FnRef(4)
            }
        );
        assert_eq!(
            map.name,
            "text_file → flat_map → map → reduce_by_key (write)"
        );
        let result = &dag.stages[1];
        assert_eq!(result.parents, vec![0]);
        assert_eq!(
            result.input,
            StageInput::Shuffle {
                shuffle: ShuffleId(0),
                read: FnRef(5)
            }
        );
        assert!(result.ops.is_empty());
        assert_eq!(result.partitions, 5);
        assert!(matches!(
            result.output,
            StageOutput::Result(Action::SaveAsText { .. })
        ));
    }

    #[test]
    fn shuffle_partitions_come_from_node_then_conf_then_map_side() {
        let mut plan = wordcount_plan();
        let dag = build_dag(&plan, &|_| 5, Some(7)).unwrap();
        assert_eq!(dag.stages[1].partitions, 7);
        if let Node::Shuffle { partitions, .. } = &mut plan.nodes[3] {
            *partitions = Some(3);
        }
        let dag = build_dag(&plan, &|_| 5, Some(7)).unwrap();
        assert_eq!(dag.stages[1].partitions, 3);
    }

    #[test]
    fn two_shuffles_make_three_stages_in_dependency_order() {
        let mut plan = wordcount_plan();
        plan.nodes.push(Node::Narrow {
            parent: 3,
            apply: FnRef(7),
            name: "map".into(),
        });
        plan.nodes.push(Node::Shuffle {
            parent: 4,
            partitions: Some(2),
            write: FnRef(8),
            read: FnRef(9),
            name: "reduce_by_key".into(),
        });
        plan.action = Action::Count;
        let dag = build_dag(&plan, &|_| 4, None).unwrap();
        assert_eq!(dag.stages.len(), 3);
        assert_eq!(dag.stages[1].parents, vec![0]);
        assert_eq!(dag.stages[1].ops, vec![FnRef(7)]);
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
    fn a_source_alone_is_one_stage() {
        let plan = LogicalPlan {
            nodes: vec![Node::TextFile {
                paths: vec!["x".into()],
                min_partitions: 1,
                decode: FnRef(1),
            }],
            action: Action::Count,
        };
        let dag = build_dag(&plan, &|_| 3, None).unwrap();
        assert_eq!(dag.stages.len(), 1);
        assert_eq!(dag.stages[0].partitions, 3);
    }

    #[test]
    fn forward_parent_is_rejected() {
        let plan = LogicalPlan {
            nodes: vec![Node::Narrow {
                parent: 0,
                apply: FnRef(1),
                name: "map".into(),
            }],
            action: Action::Count,
        };
        assert_eq!(
            build_dag(&plan, &|_| 1, None).unwrap_err(),
            PlanError::BadParent { node: 0, parent: 0 }
        );
    }
}
