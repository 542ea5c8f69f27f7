//! Where the map outputs of the shuffles this executor's tasks read are. The driver
//! sends each shuffle's [`MapStatuses`] once per version, in parts, before the first
//! task that reads them; a task names the shuffle and version only, and resolves its
//! segments here when it starts (Spark's `MapOutputTrackerWorker`).

use flint_protocol::ids::{ExecutorId, JobId, ShuffleId};
use flint_protocol::wire::{MapStatuses, SegmentSource, TaskDescriptor, decompress_size};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// A part of a shuffle's map statuses that does not fit what came before it.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("a part starting at map output {first} arrived after {have} of them")]
    OutOfOrder { first: u32, have: u32 },
    #[error("{count} map outputs from {first} are more than the shuffle's {maps}")]
    TooMany { first: u32, count: u32, maps: u32 },
    #[error("a map output has {got} sizes, not one per each of {partitions} reduce partitions")]
    Sizes { got: usize, partitions: u32 },
    #[error("a map output names holder {holder} of {holders}")]
    Holder { holder: u32, holders: usize },
    #[error("a part changes the shuffle's shape ({maps} maps x {partitions} partitions)")]
    Shape { maps: u32, partitions: u32 },
}

/// One shuffle's map statuses: whole once `outputs` has `maps` of them.
#[derive(Debug)]
pub struct ShuffleStatuses {
    pub version: u64,
    maps: u32,
    partitions: u32,
    /// The executors holding outputs and their shuffle addresses.
    holders: Vec<(ExecutorId, String)>,
    /// Per map partition: an index into `holders`, and bytes per reduce partition
    /// (compressed: see [`decompress_size`]).
    outputs: Vec<(u32, Box<[u8]>)>,
}

impl ShuffleStatuses {
    /// The non-empty segments of `reduce` partition, of every map output or of `maps`.
    pub fn segments(&self, reduce: u32, maps: Option<Range<u32>>) -> Vec<SegmentSource> {
        let maps = maps.unwrap_or(0..self.outputs.len() as u32);
        let (start, end) = (
            maps.start as usize,
            (maps.end as usize).min(self.outputs.len()),
        );
        self.outputs
            .get(start..end.max(start))
            .unwrap_or_default()
            .iter()
            .zip(start as u32..)
            .filter_map(|((holder, sizes), map)| {
                let size = decompress_size(sizes.get(reduce as usize).copied().unwrap_or(0));
                (size > 0).then(|| self.source(*holder, map, size))
            })
            .collect()
    }

    /// Every non-empty segment, with its reduce partition (a broadcast join's build side).
    pub fn all_segments(&self) -> Vec<(u32, SegmentSource)> {
        (0..self.partitions)
            .flat_map(|reduce| {
                self.segments(reduce, None)
                    .into_iter()
                    .map(move |s| (reduce, s))
            })
            .collect()
    }

    fn source(&self, holder: u32, map: u32, size: u64) -> SegmentSource {
        let (executor, addr) = &self.holders[holder as usize];
        SegmentSource {
            executor: *executor,
            addr: addr.clone(),
            map_partition: map,
            size,
        }
    }
}

/// A shuffle's statuses: parts still arriving, or whole.
enum Entry {
    Partial(ShuffleStatuses),
    Whole(Arc<ShuffleStatuses>),
}

/// The map statuses this executor was sent, per (job, shuffle): the latest version of
/// each, until the job is cleaned.
#[derive(Default)]
pub struct StatusStore {
    shuffles: Mutex<HashMap<(JobId, ShuffleId), Entry>>,
}

/// The statuses of the shuffles one task reads, as they were when it arrived.
#[derive(Clone, Default)]
pub struct TaskStatuses(Vec<(ShuffleId, Arc<ShuffleStatuses>)>);

impl TaskStatuses {
    pub fn get(&self, shuffle: ShuffleId) -> Option<&ShuffleStatuses> {
        self.0
            .iter()
            .find(|(s, _)| *s == shuffle)
            .map(|(_, st)| &**st)
    }
}

impl StatusStore {
    /// Takes one part; a part of a new version starts the shuffle's statuses afresh. A
    /// part that does not fit drops what the shuffle had: tasks naming it then fail.
    pub fn receive(&self, part: MapStatuses) -> Result<(), StatusError> {
        let mut shuffles = self.shuffles.lock().unwrap_or_else(|p| p.into_inner());
        let key = (part.job, part.shuffle);
        let entry = Self::add(shuffles.remove(&key), &part)?;
        shuffles.insert(key, entry);
        Ok(())
    }

    /// `entry` with `part` added: whole once the last map output arrived.
    fn add(entry: Option<Entry>, part: &MapStatuses) -> Result<Entry, StatusError> {
        let mut st = match entry {
            Some(Entry::Partial(st)) if st.version == part.version => st,
            _ => ShuffleStatuses {
                version: part.version,
                maps: part.maps,
                partitions: part.partitions,
                holders: Vec::new(),
                outputs: Vec::new(),
            },
        };
        if (st.maps, st.partitions) != (part.maps, part.partitions) {
            return Err(StatusError::Shape {
                maps: st.maps,
                partitions: st.partitions,
            });
        }
        if part.first as usize != st.outputs.len() {
            return Err(StatusError::OutOfOrder {
                first: part.first,
                have: st.outputs.len() as u32,
            });
        }
        let count = part.outputs.len() as u32;
        if u64::from(part.first) + u64::from(count) > u64::from(st.maps) {
            return Err(StatusError::TooMany {
                first: part.first,
                count,
                maps: st.maps,
            });
        }
        // The part's holders, as indexes into the shuffle's.
        let mut index = Vec::with_capacity(part.holders.len());
        for (executor, addr) in &part.holders {
            let i = match st.holders.iter().position(|(e, _)| e == executor) {
                Some(i) => i,
                None => {
                    st.holders.push((*executor, addr.clone()));
                    st.holders.len() - 1
                }
            };
            index.push(i as u32);
        }
        for out in &part.outputs {
            if out.sizes.len() != st.partitions as usize {
                return Err(StatusError::Sizes {
                    got: out.sizes.len(),
                    partitions: st.partitions,
                });
            }
            let Some(&holder) = index.get(out.holder as usize) else {
                return Err(StatusError::Holder {
                    holder: out.holder,
                    holders: part.holders.len(),
                });
            };
            st.outputs
                .push((holder, out.sizes.clone().into_boxed_slice()));
        }
        Ok(if st.outputs.len() == st.maps as usize {
            Entry::Whole(Arc::new(st))
        } else {
            Entry::Partial(st)
        })
    }

    /// The statuses of every shuffle `desc` reads, at the versions it names.
    pub fn for_task(&self, desc: &TaskDescriptor) -> Result<TaskStatuses, String> {
        let job = desc.attempt.task.stage.job;
        let shuffles = self.shuffles.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(ShuffleId, Arc<ShuffleStatuses>)> = Vec::new();
        for (shuffle, version) in desc.shuffle_reads() {
            if out.iter().any(|(s, _)| *s == shuffle) {
                continue;
            }
            match shuffles.get(&(job, shuffle)) {
                Some(Entry::Whole(st)) if st.version == version => out.push((shuffle, st.clone())),
                _ => {
                    return Err(format!(
                        "the map statuses of shuffle {} (version {version}) of job {} were \
                         not received whole",
                        shuffle.0, job.0
                    ));
                }
            }
        }
        Ok(TaskStatuses(out))
    }

    /// The job is over: its shuffles' statuses go.
    pub fn forget_job(&self, job: JobId) {
        self.shuffles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(j, _), _| *j != job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flint_protocol::wire::{MapOutput, compress_size};

    const J: JobId = JobId(7);
    const S: ShuffleId = ShuffleId(1);

    fn part(version: u64, first: u32, outputs: Vec<(u32, Vec<u64>)>) -> MapStatuses {
        MapStatuses {
            job: J,
            shuffle: S,
            version,
            maps: 3,
            partitions: 2,
            first,
            holders: vec![(ExecutorId(1), "a:1".into()), (ExecutorId(2), "b:2".into())],
            outputs: outputs
                .into_iter()
                .map(|(holder, sizes)| MapOutput {
                    holder,
                    sizes: sizes.into_iter().map(compress_size).collect(),
                })
                .collect(),
        }
    }

    fn whole(store: &StatusStore) -> Option<Arc<ShuffleStatuses>> {
        match store.shuffles.lock().unwrap().get(&(J, S)) {
            Some(Entry::Whole(s)) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn parts_assemble_and_resolve_segments_per_reduce_partition() {
        let store = StatusStore::default();
        store
            .receive(part(4, 0, vec![(0, vec![10, 0]), (1, vec![5, 7])]))
            .unwrap();
        assert!(whole(&store).is_none(), "two of three map outputs");
        store.receive(part(4, 2, vec![(1, vec![0, 3])])).unwrap();
        let st = whole(&store).expect("whole");
        let seg = |s: &SegmentSource| {
            let size = compress_size(s.size);
            (
                s.executor.0,
                s.addr.clone(),
                s.map_partition,
                decompress_size(size),
            )
        };
        let approx = |b| decompress_size(compress_size(b));
        assert_eq!(
            st.segments(0, None).iter().map(seg).collect::<Vec<_>>(),
            vec![
                (1, "a:1".into(), 0, approx(10)),
                (2, "b:2".into(), 1, approx(5))
            ],
            "empty segments are skipped"
        );
        assert_eq!(
            st.segments(1, Some(2..3))
                .iter()
                .map(seg)
                .collect::<Vec<_>>(),
            vec![(2, "b:2".into(), 2, approx(3))],
            "a share of the map outputs"
        );
        assert!(
            st.segments(1, Some(5..9)).is_empty(),
            "a range past the end"
        );
        assert_eq!(
            st.all_segments()
                .iter()
                .map(|(r, s)| (*r, s.map_partition))
                .collect::<Vec<_>>(),
            vec![(0, 0), (0, 1), (1, 1), (1, 2)]
        );
    }

    #[test]
    fn a_new_version_replaces_the_old_and_bad_parts_are_refused() {
        let store = StatusStore::default();
        store
            .receive(part(
                4,
                0,
                vec![(0, vec![1, 1]), (0, vec![1, 1]), (0, vec![1, 1])],
            ))
            .unwrap();
        assert_eq!(whole(&store).unwrap().version, 4);
        store.receive(part(9, 0, vec![(1, vec![1, 1])])).unwrap();
        assert!(whole(&store).is_none(), "version 9 is not whole yet");
        assert_eq!(
            store.receive(part(9, 2, vec![(1, vec![1, 1])])),
            Err(StatusError::OutOfOrder { first: 2, have: 1 })
        );
        assert_eq!(
            store.receive(part(9, 0, vec![(1, vec![1])])),
            Err(StatusError::Sizes {
                got: 1,
                partitions: 2
            })
        );
        assert_eq!(
            store.receive(part(9, 0, vec![(2, vec![1, 1])])),
            Err(StatusError::Holder {
                holder: 2,
                holders: 2
            })
        );
        assert!(matches!(
            store.receive(part(9, 0, vec![(0, vec![1, 1]); 4])),
            Err(StatusError::TooMany { .. })
        ));
        store.forget_job(J);
        assert!(store.shuffles.lock().unwrap().is_empty());
    }
}
