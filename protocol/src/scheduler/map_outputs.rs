//! Where map outputs live: per job and shuffle, the executor holding each map task's
//! output and its segment sizes (Spark's `MapOutputTracker`); and, across the jobs of an
//! application, where the partitions of its cached datasets are kept (the block
//! manager master's half that Flint needs).

use crate::dag::SegmentSizes;
use crate::ids::{ExecutorId, JobId, ShuffleId};
use crate::wire::{compress_size, decompress_size};
use std::collections::BTreeMap;

/// Where one map task's output lives and how big each reduce partition's segment is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapStatus {
    pub executor: ExecutorId,
    /// Bytes per reduce partition.
    pub sizes: Vec<u64>,
}

/// A map output as the tracker keeps it: its exact bytes, and each reduce partition's
/// segment size in one byte ([`compress_size`], as Spark's map statuses keep them), so
/// that a shuffle of M map outputs and R partitions costs the driver M x R bytes, not
/// 8 M x R. The adaptive planner and the executors work from the rounded sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapOutputStatus {
    pub executor: ExecutorId,
    /// Bytes over every partition, exactly.
    pub bytes: u64,
    /// Per reduce partition, compressed.
    pub sizes: Box<[u8]>,
}

impl MapOutputStatus {
    pub fn new(status: &MapStatus) -> Self {
        MapOutputStatus {
            executor: status.executor,
            // Sizes come from an executor: summed without overflowing.
            bytes: status.sizes.iter().fold(0, |a, b| a.saturating_add(*b)),
            sizes: status.sizes.iter().map(|b| compress_size(*b)).collect(),
        }
    }

    /// Reduce partition `p`'s segment size, rounded (0: empty or no such partition).
    pub fn size(&self, p: usize) -> u64 {
        self.sizes.get(p).map_or(0, |c| decompress_size(*c))
    }
}

impl SegmentSizes for MapOutputStatus {
    fn partitions(&self) -> usize {
        self.sizes.len()
    }
    fn size(&self, partition: usize) -> u64 {
        MapOutputStatus::size(self, partition)
    }
}

/// One segment a reduce task must fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLocation {
    pub shuffle: ShuffleId,
    /// The reduce partition whose segment this is.
    pub reduce: u32,
    pub map_partition: u32,
    pub executor: ExecutorId,
    /// Bytes, rounded (see [`MapOutputStatus`]).
    pub size: u64,
}

/// Map outputs per (job, shuffle).
#[derive(Debug, Default)]
pub struct MapOutputTracker {
    outputs: BTreeMap<(JobId, ShuffleId), ShuffleOutputs>,
    /// The last version handed out (see [`MapOutputTracker::version`]).
    last_version: u64,
}

/// One shuffle's map outputs.
#[derive(Debug)]
struct ShuffleOutputs {
    maps: Vec<Option<MapOutputStatus>>,
    /// How many of `maps` are `None`: the shuffle is complete at 0.
    missing: u32,
    version: u64,
}

impl MapOutputTracker {
    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }

    pub(super) fn register_shuffle(&mut self, job: JobId, shuffle: ShuffleId, map_partitions: u32) {
        let version = self.next_version();
        self.outputs.insert(
            (job, shuffle),
            ShuffleOutputs {
                maps: vec![None; map_partitions as usize],
                missing: map_partitions,
                version,
            },
        );
    }

    pub(super) fn register(&mut self, job: JobId, shuffle: ShuffleId, map: u32, status: MapStatus) {
        let version = self.next_version();
        if let Some(outputs) = self.outputs.get_mut(&(job, shuffle))
            && let Some(slot) = outputs.maps.get_mut(map as usize)
        {
            if slot.is_none() {
                outputs.missing -= 1;
            }
            *slot = Some(MapOutputStatus::new(&status));
            outputs.version = version;
        }
    }

    /// Forgets every output held by `executor` (of `only` job, when given); returns the
    /// (job, shuffle, map) triples lost.
    pub(super) fn remove_executor(
        &mut self,
        executor: ExecutorId,
        only: Option<JobId>,
    ) -> Vec<(JobId, ShuffleId, u32)> {
        let mut lost = Vec::new();
        for ((job, shuffle), outputs) in &mut self.outputs {
            if only.is_some_and(|j| j != *job) {
                continue;
            }
            let before = lost.len();
            for (i, slot) in outputs.maps.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|s| s.executor == executor) {
                    *slot = None;
                    lost.push((*job, *shuffle, i as u32));
                }
            }
            if lost.len() > before {
                outputs.missing += (lost.len() - before) as u32;
                self.last_version += 1;
                outputs.version = self.last_version;
            }
        }
        lost
    }

    /// Whether every map output of `shuffle` is known: what a task reading it needs.
    /// O(1), so that launching a reduce task does not walk its map outputs.
    pub fn complete(&self, job: JobId, shuffle: ShuffleId) -> bool {
        self.outputs
            .get(&(job, shuffle))
            .is_some_and(|o| o.missing == 0)
    }

    /// The version of `shuffle`'s map outputs: it changes whenever one is registered or
    /// lost, and is never reused (not even by another job), so that an executor holding
    /// the statuses of one version may use them for every task that names it.
    pub fn version(&self, job: JobId, shuffle: ShuffleId) -> Option<u64> {
        self.outputs.get(&(job, shuffle)).map(|o| o.version)
    }

    /// The segments of `reduce` partition, or `None` while any map output is missing.
    /// O(map outputs): for locality and reporting, not for every launch.
    pub fn locations(
        &self,
        job: JobId,
        shuffle: ShuffleId,
        reduce: u32,
    ) -> Option<Vec<MapLocation>> {
        let outputs = self.outputs.get(&(job, shuffle))?;
        let mut out = Vec::new();
        for (i, slot) in outputs.maps.iter().enumerate() {
            let status = slot.as_ref()?;
            let size = status.size(reduce as usize);
            if size > 0 {
                out.push(MapLocation {
                    shuffle,
                    reduce,
                    map_partition: i as u32,
                    executor: status.executor,
                    size,
                });
            }
        }
        Some(out)
    }

    /// Per map partition, where its output lives.
    pub fn statuses(&self, job: JobId, shuffle: ShuffleId) -> Option<&[Option<MapOutputStatus>]> {
        self.outputs.get(&(job, shuffle)).map(|o| o.maps.as_slice())
    }

    pub(super) fn remove_job(&mut self, job: JobId) {
        self.outputs.retain(|(j, _), _| *j != job);
    }
}

/// Where each partition of each cached dataset is kept, per (application, dataset id).
/// Entries go when their executor is removed, evicts them, or the dataset is unpersisted.
#[derive(Debug, Default)]
pub struct CachedPartitions {
    kept: BTreeMap<(u64, u32), Vec<Option<MapStatus>>>,
}

impl CachedPartitions {
    /// Partition `map` of dataset `id` (of `partitions`) is kept as `status`.
    pub(super) fn record(
        &mut self,
        app: u64,
        id: u32,
        partitions: u32,
        map: u32,
        status: MapStatus,
    ) {
        let parts = self
            .kept
            .entry((app, id))
            .or_insert_with(|| vec![None; partitions as usize]);
        if parts.len() != partitions as usize {
            *parts = vec![None; partitions as usize];
        }
        if let Some(slot) = parts.get_mut(map as usize) {
            *slot = Some(status);
        }
    }

    /// The kept partitions of dataset `id`, when it has `partitions` of them.
    pub(super) fn kept(&self, app: u64, id: u32, partitions: u32) -> Vec<(u32, MapStatus)> {
        match self.kept.get(&(app, id)) {
            Some(parts) if parts.len() == partitions as usize => parts
                .iter()
                .enumerate()
                .filter_map(|(m, s)| Some((m as u32, s.clone()?)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `executor` no longer keeps partitions `maps` of dataset `id` (evicted).
    pub(super) fn dropped(&mut self, app: u64, id: u32, executor: ExecutorId, maps: &[u32]) {
        if let Some(parts) = self.kept.get_mut(&(app, id)) {
            for m in maps {
                if let Some(slot) = parts.get_mut(*m as usize)
                    && slot.as_ref().is_some_and(|s| s.executor == executor)
                {
                    *slot = None;
                }
            }
        }
    }

    pub(super) fn forget_executor(&mut self, executor: ExecutorId) {
        for parts in self.kept.values_mut() {
            for slot in parts.iter_mut() {
                if slot.as_ref().is_some_and(|s| s.executor == executor) {
                    *slot = None;
                }
            }
        }
    }

    pub(super) fn forget_dataset(&mut self, app: u64, id: u32) {
        self.kept.remove(&(app, id));
    }

    pub(super) fn forget_app(&mut self, app: u64) {
        self.kept.retain(|(a, _), _| *a != app);
    }

    /// Partitions kept of every dataset of `app` (for reports and tests).
    pub fn count(&self, app: u64) -> usize {
        self.kept
            .iter()
            .filter(|((a, _), _)| *a == app)
            .map(|(_, p)| p.iter().flatten().count())
            .sum()
    }
}
