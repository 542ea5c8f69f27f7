//! The logical plan: what a job's `main` asked for, before it is cut into stages.
//!
//! Functions are named by [`FnRef`]: an entry of the job component's own function table,
//! produced by the guest SDK on the driver and only ever handed back to an instance of
//! the same component. The host never interprets one.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A function inside the job component (its indirect-call table index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FnRef(pub u32);

/// Index of a node in [`LogicalPlan::nodes`].
pub type NodeIndex = usize;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// Lines of text files; `paths` are files or directories.
    TextFile {
        paths: Vec<String>,
        min_partitions: u32,
        decode: FnRef,
    },
    /// A narrow, batch-at-a-time transformation (map, filter, flat_map...): fuses into the
    /// stage of its parent.
    Narrow {
        parent: NodeIndex,
        apply: FnRef,
        name: String,
    },
    /// A wide dependency: the map side combines and partitions with `write`, the reduce
    /// side merges what it fetched with `read`.
    Shuffle {
        parent: NodeIndex,
        partitions: Option<u32>,
        write: FnRef,
        read: FnRef,
        name: String,
    },
}

/// What the job does with the final dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Bring all rows back to the driver program, encoded by `encode`.
    Collect {
        encode: FnRef,
    },
    Count,
    /// Write one `part-NNNNN` text file per partition, rows rendered by `render`.
    SaveAsText {
        path: String,
        render: FnRef,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Collect { .. } => "collect",
            Action::Count => "count",
            Action::SaveAsText { .. } => "save_as_text",
        }
    }
}

/// Nodes in topological order; the last one is the dataset the action runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogicalPlan {
    pub nodes: Vec<Node>,
    pub action: Action,
}

#[derive(Debug, Error, PartialEq)]
pub enum PlanError {
    #[error("the plan has no nodes")]
    Empty,
    #[error("plan node {node} names parent {parent}, which does not come before it")]
    BadParent { node: usize, parent: usize },
    #[error("plan node {node}: {what}")]
    Invalid { node: usize, what: String },
}

impl LogicalPlan {
    /// Checks the structure a guest sent: parents point backwards, counts are sane.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.nodes.is_empty() {
            return Err(PlanError::Empty);
        }
        for (i, node) in self.nodes.iter().enumerate() {
            match node {
                Node::TextFile { paths, .. } => {
                    if paths.is_empty() {
                        return Err(PlanError::Invalid {
                            node: i,
                            what: "text_file was given no path".into(),
                        });
                    }
                }
                Node::Narrow { parent, .. } | Node::Shuffle { parent, .. } => {
                    if *parent >= i {
                        return Err(PlanError::BadParent {
                            node: i,
                            parent: *parent,
                        });
                    }
                }
            }
            if let Node::Shuffle {
                partitions: Some(0),
                ..
            } = node
            {
                return Err(PlanError::Invalid {
                    node: i,
                    what: "a shuffle needs at least one partition".into(),
                });
            }
        }
        Ok(())
    }

    pub fn root(&self) -> NodeIndex {
        self.nodes.len() - 1
    }
}
