//! The order of the queue, shared by the master and `herd-bench replay` so the replay
//! queues exactly as the master does: higher priority first, FIFO within a priority, a
//! re-queued task first within its priority. (A scheduling pass then walks the whole
//! queue and places whatever fits, so nothing waits behind a task that fits nowhere.)

use std::collections::VecDeque;

/// Where a task of `priority` goes in `queue` (ordered as this module says): after the
/// tasks of its priority, or with `first` before them. `priority_of` reads an entry's.
pub fn position<T>(
    queue: &VecDeque<T>,
    priority: i32,
    first: bool,
    priority_of: impl Fn(&T) -> i32,
) -> usize {
    queue.partition_point(|other| {
        let p = priority_of(other);
        if first { p > priority } else { p >= priority }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn higher_first_fifo_within_and_requeued_first_within() {
        let mut q = std::collections::VecDeque::new();
        for (name, p) in [("a", 0), ("b", 5), ("c", 0), ("d", -1), ("e", 5)] {
            let at = super::position(&q, p, false, |x: &(&str, i32)| x.1);
            q.insert(at, (name, p));
        }
        let at = super::position(&q, 0, true, |x: &(&str, i32)| x.1);
        q.insert(at, ("again", 0));
        let order: Vec<&str> = q.iter().map(|x| x.0).collect();
        assert_eq!(order, ["b", "e", "again", "a", "c", "d"]);
    }
}
