//! The executor's memory manager, after Spark's unified model: one pool
//! (`executor.memory`) shared by execution (the tasks' guests) and storage (the cache
//! tier of [`crate::shuffle::ShuffleStore`]).
//!
//! - A task is granted its memory at start: what it asks for (`task.memory`), or less
//!   when the running tasks hold the pool, but never less than half of a slot's fair
//!   share. The grant is its guest's cap and sets the budget its operators spill at, so a
//!   busy executor's tasks spill sooner instead of exhausting the host.
//! - Storage may use whatever execution does not hold, and is evicted when a grant needs
//!   the room, but never below its floor (`executor.cache_memory`), which execution
//!   cannot take.
//!
//! No IO here: the store asks for its budget and evicts itself.

use std::sync::{Arc, Mutex};

/// The smallest grant a task gets when it asks for more (unless it asks for less).
const MIN_GRANT: u64 = 64 << 20;

#[derive(Debug)]
pub struct MemoryPool {
    total: u64,
    floor: u64,
    slots: u64,
    /// Bytes granted to running tasks.
    execution: Mutex<u64>,
}

/// A running task's share of the pool, returned when dropped.
#[derive(Debug)]
pub struct Grant {
    pool: Arc<MemoryPool>,
    bytes: u64,
}

impl Grant {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut e = self.pool.execution();
        *e = e.saturating_sub(self.bytes);
    }
}

impl MemoryPool {
    /// A pool of `total` bytes for `slots` concurrent tasks, of which storage keeps
    /// `floor` (capped at `total`).
    pub fn new(total: u64, floor: u64, slots: u32) -> Arc<MemoryPool> {
        Arc::new(MemoryPool {
            total,
            floor: floor.min(total),
            slots: u64::from(slots.max(1)),
            execution: Mutex::new(0),
        })
    }

    fn execution(&self) -> std::sync::MutexGuard<'_, u64> {
        self.execution.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What execution may hold in all: the pool but storage's floor.
    fn execution_cap(&self) -> u64 {
        self.total - self.floor
    }

    /// Grants a task up to `want` bytes: what is free for execution, or half a slot's
    /// fair share if that is more (a task always runs, as in Spark, where each of N tasks
    /// is guaranteed 1/2N of the pool).
    pub fn grant(self: &Arc<Self>, want: u64) -> Grant {
        let mut e = self.execution();
        let free = self.execution_cap().saturating_sub(*e);
        let least = (self.execution_cap() / self.slots / 2).max(MIN_GRANT);
        let bytes = want.min(free.max(least));
        *e += bytes;
        Grant {
            pool: self.clone(),
            bytes,
        }
    }

    /// Bytes the cache tier may hold now: all that execution does not, and at least its
    /// floor.
    pub fn storage_budget(&self) -> u64 {
        self.total.saturating_sub(*self.execution()).max(self.floor)
    }

    /// Bytes granted to running tasks.
    pub fn execution_used(&self) -> u64 {
        *self.execution()
    }
}

/// The pool's size when `executor.memory` is 0: three quarters of the machine's memory
/// (`/proc/meminfo`), or 8 GiB where that cannot be read.
pub fn default_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(8 << 30, |kb| (kb << 10) / 4 * 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn tasks_get_what_they_ask_while_the_pool_has_it() {
        let pool = MemoryPool::new(8 * G, G, 2);
        let a = pool.grant(2 * G);
        let b = pool.grant(2 * G);
        assert_eq!((a.bytes(), b.bytes()), (2 * G, 2 * G));
        assert_eq!(pool.execution_used(), 4 * G);
        // Storage has what execution does not.
        assert_eq!(pool.storage_budget(), 4 * G);
        drop(a);
        assert_eq!(pool.execution_used(), 2 * G);
        assert_eq!(pool.storage_budget(), 6 * G);
    }

    #[test]
    fn a_full_pool_grants_less_but_never_below_half_a_fair_share() {
        let pool = MemoryPool::new(5 * G, G, 4);
        // Execution may hold 4 GiB; a fair share is 1 GiB.
        let a = pool.grant(3 * G);
        let b = pool.grant(3 * G);
        assert_eq!((a.bytes(), b.bytes()), (3 * G, G));
        let c = pool.grant(3 * G);
        assert_eq!(c.bytes(), G / 2);
        // Storage keeps its floor however much execution holds.
        assert_eq!(pool.storage_budget(), G);
        drop((a, b, c));
        assert_eq!(pool.execution_used(), 0);
        assert_eq!(pool.storage_budget(), 5 * G);
    }

    #[test]
    fn a_small_ask_is_granted_whole_and_the_floor_never_exceeds_the_pool() {
        let pool = MemoryPool::new(G, 2 * G, 2);
        assert_eq!(pool.storage_budget(), G);
        // Nothing is free for execution, but a task still runs with the least grant.
        assert_eq!(pool.grant(4 * G).bytes(), MIN_GRANT);
        assert_eq!(pool.grant(1 << 20).bytes(), 1 << 20);
    }

    #[test]
    fn the_default_pool_is_most_of_the_machine() {
        let t = default_total();
        assert!(t >= 256 << 20, "{t}");
    }
}
