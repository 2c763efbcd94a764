//! Which GPU indices of a worker each task holds. The policies count GPUs; once a worker
//! is chosen, its pool hands out specific indices, lowest free first, and never one index
//! to two holders. Pure data, shared by the master and `herd-bench replay`.

/// One GPU index and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    index: u32,
    holder: Option<String>,
}

/// The GPU indices of one worker, sorted, each free or held by one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuPool {
    slots: Vec<Slot>,
}

impl GpuPool {
    /// A pool of free indices (duplicates are taken once).
    pub fn new(indices: impl IntoIterator<Item = u32>) -> GpuPool {
        let mut indices: Vec<u32> = indices.into_iter().collect();
        indices.sort_unstable();
        indices.dedup();
        GpuPool {
            slots: indices
                .into_iter()
                .map(|index| Slot {
                    index,
                    holder: None,
                })
                .collect(),
        }
    }

    /// How many indices there are.
    pub fn len(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Whether the worker has no GPU at all.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many are free.
    pub fn free(&self) -> u32 {
        self.slots.iter().filter(|s| s.holder.is_none()).count() as u32
    }

    /// Gives `holder` the `n` lowest free indices, or nothing (and changes nothing) when
    /// fewer are free.
    pub fn take(&mut self, n: u32, holder: &str) -> Option<Vec<u32>> {
        if n == 0 {
            return Some(Vec::new());
        }
        if self.free() < n {
            return None;
        }
        let mut taken = Vec::with_capacity(n as usize);
        for slot in self.slots.iter_mut().filter(|s| s.holder.is_none()) {
            if taken.len() == n as usize {
                break;
            }
            slot.holder = Some(holder.to_string());
            taken.push(slot.index);
        }
        Some(taken)
    }

    /// Gives `holder` these exact indices (what SQLite says it held before a restart).
    /// False, changing nothing, when one is unknown or held by another.
    pub fn hold(&mut self, indices: &[u32], holder: &str) -> bool {
        let ok = indices.iter().all(|&i| {
            self.slots
                .iter()
                .any(|s| s.index == i && s.holder.as_deref().is_none_or(|h| h == holder))
        });
        if ok {
            for slot in self.slots.iter_mut().filter(|s| indices.contains(&s.index)) {
                slot.holder = Some(holder.to_string());
            }
        }
        ok
    }

    /// Frees every index `holder` has; returns them.
    pub fn release(&mut self, holder: &str) -> Vec<u32> {
        let mut freed = Vec::new();
        for slot in &mut self.slots {
            if slot.holder.as_deref() == Some(holder) {
                slot.holder = None;
                freed.push(slot.index);
            }
        }
        freed
    }

    /// The indices `holder` has.
    pub fn held_by(&self, holder: &str) -> Vec<u32> {
        self.slots
            .iter()
            .filter(|s| s.holder.as_deref() == Some(holder))
            .map(|s| s.index)
            .collect()
    }

    /// Every index with its holder, in index order.
    pub fn slots(&self) -> impl Iterator<Item = (u32, Option<&str>)> {
        self.slots.iter().map(|s| (s.index, s.holder.as_deref()))
    }

    /// The worker now reports these indices (it registered again): holders of indices
    /// still there keep them; indices gone are dropped with their holders, which are
    /// returned.
    pub fn reindex(&mut self, indices: impl IntoIterator<Item = u32>) -> Vec<String> {
        let mut next = GpuPool::new(indices);
        let mut dropped = Vec::new();
        for old in self.slots.drain(..) {
            let Some(holder) = old.holder else { continue };
            match next.slots.iter_mut().find(|s| s.index == old.index) {
                Some(slot) => slot.holder = Some(holder),
                None => dropped.push(holder),
            }
        }
        *self = next;
        dropped
    }
}

#[cfg(test)]
mod tests {
    type Pool = super::GpuPool;

    #[test]
    fn lowest_free_first_and_all_or_nothing() {
        let mut pool = Pool::new([2, 0, 5]);
        assert_eq!(pool.take(1, "t-1"), Some(vec![0]));
        assert_eq!(pool.take(3, "t-2"), None);
        assert_eq!(pool.free(), 2);
        assert_eq!(pool.take(2, "t-2"), Some(vec![2, 5]));
        assert_eq!(pool.release("t-1"), vec![0]);
        assert_eq!(pool.take(1, "t-3"), Some(vec![0]));
        assert_eq!(pool.held_by("t-2"), vec![2, 5]);
    }

    #[test]
    fn hold_restores_exact_indices_and_refuses_conflicts() {
        let mut pool = Pool::new([0, 1, 2]);
        assert!(pool.hold(&[1], "t-1"));
        assert!(!pool.hold(&[1, 2], "t-2"), "index 1 is t-1's");
        assert!(!pool.hold(&[7], "t-2"), "no index 7");
        assert_eq!(pool.free(), 2);
        assert_eq!(pool.take(2, "t-3"), Some(vec![0, 2]));
    }

    #[test]
    fn reindex_keeps_holders_of_indices_still_there() {
        let mut pool = Pool::new([0, 1]);
        pool.take(1, "t-1");
        pool.hold(&[1], "t-2");
        assert_eq!(pool.reindex([0, 3]), vec!["t-2".to_string()]);
        assert_eq!(pool.held_by("t-1"), vec![0]);
        assert_eq!(pool.free(), 1);
    }
}
