//! The component bytes a driver holds: those of running applications (an executor that
//! has not compiled a component fetches it from here), and beyond them the most recently
//! used ones, up to `driver.component_cache` bytes, so that a tenant who submits the same
//! component again does not send it again (4.8 MB over QUIC and a hash on each side:
//! some 15 ms of a 80 ms job).
//!
//! A held component is offered back only to a tenant that sent its bytes: knowing a hash
//! (from a log or the UI) is not having the component, and another tenant's component
//! may hold what that tenant would not share.

use flint_protocol::ids::ModuleHash;
use std::collections::HashMap;
use std::sync::Arc;

/// Most components kept that no application uses, however small.
const MAX_IDLE: usize = 256;

struct Held {
    bytes: Arc<Vec<u8>>,
    /// Running applications that use it.
    users: usize,
    /// Tenants that sent these bytes (at most the tenants file's names).
    senders: Vec<String>,
    /// When it was last submitted or released, by [`Components::clock`].
    used: u64,
}

pub struct Components {
    held: HashMap<ModuleHash, Held>,
    /// Bytes of components no application uses that may stay.
    idle_bytes: u64,
    clock: u64,
}

impl Components {
    pub fn new(idle_bytes: u64) -> Components {
        Components {
            held: HashMap::new(),
            idle_bytes,
            clock: 0,
        }
    }

    /// The bytes of `module`, `len` long, if `tenant` sent them before.
    pub fn sent_before(
        &mut self,
        tenant: &str,
        module: &ModuleHash,
        len: u64,
    ) -> Option<Arc<Vec<u8>>> {
        self.clock += 1;
        let h = self.held.get_mut(module)?;
        if h.bytes.len() as u64 != len || !h.senders.iter().any(|s| s == tenant) {
            return None;
        }
        h.used = self.clock;
        Some(h.bytes.clone())
    }

    /// The bytes of `module`, for an executor.
    pub fn get(&self, module: &ModuleHash) -> Option<Arc<Vec<u8>>> {
        self.held.get(module).map(|h| h.bytes.clone())
    }

    /// An application of `tenant` runs `module` (whose `bytes` that tenant sent, or was
    /// given back by [`Components::sent_before`]).
    pub fn hold(&mut self, module: ModuleHash, bytes: Arc<Vec<u8>>, tenant: &str) {
        self.clock += 1;
        let h = self.held.entry(module).or_insert_with(|| Held {
            bytes,
            users: 0,
            senders: Vec::new(),
            used: 0,
        });
        h.users += 1;
        h.used = self.clock;
        if !h.senders.iter().any(|s| s == tenant) {
            h.senders.push(tenant.to_string());
        }
    }

    /// An application of `module` ended: the least recently used components that no
    /// application uses go, past `driver.component_cache` bytes or [`MAX_IDLE`] of them.
    pub fn release(&mut self, module: &ModuleHash) {
        self.clock += 1;
        if let Some(h) = self.held.get_mut(module) {
            h.users = h.users.saturating_sub(1);
            h.used = self.clock;
        }
        let mut idle: Vec<(u64, ModuleHash, u64)> = self
            .held
            .iter()
            .filter(|(_, h)| h.users == 0)
            .map(|(m, h)| (h.used, *m, h.bytes.len() as u64))
            .collect();
        let mut bytes: u64 = idle.iter().map(|i| i.2).sum();
        let mut count = idle.len();
        idle.sort_unstable_by_key(|i| i.0);
        for (_, m, n) in idle {
            if bytes <= self.idle_bytes && count <= MAX_IDLE {
                break;
            }
            self.held.remove(&m);
            bytes -= n;
            count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(i: u8) -> ModuleHash {
        ModuleHash([i; 32])
    }

    #[test]
    fn a_component_is_given_back_only_to_a_tenant_that_sent_it() {
        let mut c = Components::new(1 << 20);
        let bytes = Arc::new(vec![7u8; 100]);
        c.hold(hash(1), bytes.clone(), "a");
        assert!(c.sent_before("b", &hash(1), 100).is_none(), "not b's");
        assert!(c.sent_before("a", &hash(1), 99).is_none(), "not that size");
        assert!(c.sent_before("a", &hash(2), 100).is_none());
        c.release(&hash(1));
        // Kept after its application ended, for its sender only.
        assert_eq!(c.sent_before("a", &hash(1), 100), Some(bytes.clone()));
        assert!(c.sent_before("b", &hash(1), 100).is_none());
        assert_eq!(c.get(&hash(1)), Some(bytes.clone()));
        // Once b has sent it too, b is given it back as well.
        c.hold(hash(1), bytes.clone(), "b");
        c.release(&hash(1));
        assert_eq!(c.sent_before("b", &hash(1), 100), Some(bytes));
    }

    #[test]
    fn idle_components_go_least_recently_used_first_past_the_budget() {
        let mut c = Components::new(250);
        for i in 1..=3 {
            c.hold(hash(i), Arc::new(vec![i; 100]), "a");
        }
        // Running components stay, whatever the budget.
        c.release(&hash(2));
        c.release(&hash(1));
        assert!(c.get(&hash(1)).is_some() && c.get(&hash(2)).is_some());
        // 2 is used again (submitted), then 3 ends: 300 idle bytes, 1 is the oldest.
        assert!(c.sent_before("a", &hash(2), 100).is_some());
        c.release(&hash(3));
        assert!(c.get(&hash(1)).is_none());
        assert!(c.get(&hash(2)).is_some() && c.get(&hash(3)).is_some());
        // A budget of 0 keeps only what runs.
        let mut none = Components::new(0);
        none.hold(hash(1), Arc::new(vec![1; 10]), "a");
        none.hold(hash(1), Arc::new(vec![1; 10]), "a");
        none.release(&hash(1));
        assert!(
            none.get(&hash(1)).is_some(),
            "one application still runs it"
        );
        none.release(&hash(1));
        assert!(none.get(&hash(1)).is_none());
    }

    #[test]
    fn at_most_max_idle_components_stay_however_small() {
        let mut c = Components::new(u64::MAX);
        for i in 0..=MAX_IDLE {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.hold(ModuleHash(h), Arc::new(vec![1]), "a");
            c.release(&ModuleHash(h));
        }
        assert_eq!(c.held.len(), MAX_IDLE);
        assert!(c.get(&ModuleHash([0; 32])).is_none(), "the oldest went");
    }
}
