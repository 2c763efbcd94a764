//! Where liveness is decided: the one rule ([`Liveness::state`]) that every view, the
//! scheduler and the ticker apply, and the two guards that keep a master's own trouble from
//! being taken for the death of its workers ([`StallGuard`], and the hold on mass removals
//! in [`Liveness::hold_removals`]).

use std::time::Duration;

use tokio::time::Instant;

use herd::domain::WorkerState;

/// The longest an acknowledgement is taken to travel, in the fencing margin.
const DELIVERY: Duration = Duration::from_secs(1);

/// The liveness rule and its two timeouts. This is the only place they live.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Silent this long (or stream closed): Inactive.
    pub heartbeat_timeout: Duration,
    /// Silent this long: Removed.
    pub worker_timeout: Duration,
    /// Set while a tick holds back a mass removal: silent workers stay Inactive.
    pub hold_removals: bool,
    /// After a take-over (a restart, or a fail-over to this master), how long workers that
    /// were Active are given to reconnect: none turns Inactive or Removed for silence
    /// before it has passed (`--failover-grace`).
    pub failover_grace: Duration,
    /// When the grace of the last take-over ends.
    grace_until: Option<Instant>,
}

impl Liveness {
    pub fn new(heartbeat_timeout: Duration, worker_timeout: Duration) -> Liveness {
        Liveness {
            heartbeat_timeout,
            worker_timeout,
            hold_removals: false,
            failover_grace: heartbeat_timeout * 2,
            grace_until: None,
        }
    }

    /// The same rule with another `--failover-grace`.
    pub fn with_failover_grace(self, grace: Duration) -> Liveness {
        Liveness {
            failover_grace: grace,
            ..self
        }
    }

    /// This master took over at `now` (it loaded the cluster's state): the grace begins.
    pub fn taken_over(&mut self, now: Instant) {
        self.grace_until = Some(now + self.failover_grace);
    }

    fn in_grace(&self, now: Instant) -> bool {
        self.grace_until.is_some_and(|end| now < end)
    }

    /// The state of a worker at `now`, from the facts the cluster keeps.
    pub fn state(&self, presence: &Presence, now: Instant) -> WorkerState {
        if presence.pending {
            return WorkerState::Pending;
        }
        let silent = now.saturating_duration_since(presence.last_seen);
        let grace = self.in_grace(now);
        if presence.removed || (silent >= self.worker_timeout && !self.hold_removals && !grace) {
            WorkerState::Removed
        } else if presence.held && grace {
            // Active before the take-over, and given the grace to reconnect.
            WorkerState::Active
        } else if !presence.connected || silent >= self.heartbeat_timeout {
            WorkerState::Inactive
        } else {
            WorkerState::Active
        }
    }

    /// Fencing: how long a worker may go without an acknowledgement from the master before
    /// it must have stopped its tasks (told at registration). The worker timeout, less a
    /// margin for what could make the worker's count end later than the master's: its
    /// last acknowledgement may answer the last heartbeat the master heard, a heartbeat
    /// interval after the one before ([`DELIVERY`] covers the trip), and the two clocks may
    /// run at slightly different rates (1%). So the worker has stopped a task before the
    /// master re-queues it; never less than half the worker timeout.
    pub fn fence_after(&self, heartbeat_interval: Duration) -> Duration {
        let margin = heartbeat_interval + self.worker_timeout / 100 + DELIVERY;
        self.worker_timeout
            .saturating_sub(margin)
            .max(self.worker_timeout / 2)
    }

    /// How long a mass removal is held back before it goes ahead.
    pub fn removal_hold(&self) -> Duration {
        self.heartbeat_timeout
    }

    /// Whether removing `due` workers at once, out of `known` not yet Removed, looks more
    /// like the master's failure (its network, its clock) than the workers': more than half
    /// of them, and more than one.
    pub fn is_mass_removal(due: usize, known: usize) -> bool {
        due >= 2 && due * 2 > known
    }
}

/// The facts liveness is decided from.
#[derive(Debug, Clone, Copy)]
pub struct Presence {
    /// Last heartbeat (or registration, or master start for workers loaded from SQLite, or
    /// the end of a stall of the master: time the master did not run is not the workers'
    /// fault).
    pub last_seen: Instant,
    /// A heartbeat stream is open (and the worker has not said it is shutting down).
    pub connected: bool,
    /// The ticker removed this worker (its tasks were re-queued); only re-registering
    /// brings it back.
    pub removed: bool,
    /// Pre-registered by an operator and never registered since: no timeout applies.
    pub pending: bool,
    /// Active when this master took over, and not connected to it since: Active until the
    /// failover grace ends (a scheduler still needs its stream to place anything on it).
    pub held: bool,
}

/// Notices when the master itself has not run (SIGSTOP, a VM freeze, a suspended laptop, a
/// long stall). The cluster is touched at least every check interval (the ticker), so a
/// far larger gap between two touches means the master, not its workers, was away.
#[derive(Debug)]
pub struct StallGuard {
    threshold: Duration,
    last_run: Instant,
}

impl StallGuard {
    /// A gap above `max(4 × check_interval, 2 s)` counts as a stall.
    pub fn new(check_interval: Duration, now: Instant) -> StallGuard {
        StallGuard {
            threshold: (check_interval * 4).max(Duration::from_secs(2)),
            last_run: now,
        }
    }

    /// Records that the master runs at `now`; returns the gap when it was a stall.
    pub fn ran(&mut self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last_run);
        self.last_run = self.last_run.max(now);
        (gap > self.threshold).then_some(gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker stops its tasks before the master re-queues them: the deadline it is given
    /// leaves a heartbeat interval, 1% of clock drift and a second of delivery before the
    /// worker timeout, and never less than half of it.
    #[test]
    fn the_fencing_deadline_ends_before_the_worker_timeout() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let fence = |timeout: Duration, interval: Duration| {
            Liveness::new(s(1), timeout).fence_after(interval)
        };
        assert_eq!(fence(s(600), s(5)), s(588));
        assert_eq!(fence(s(6), ms(500)), ms(4440));
        assert_eq!(
            fence(s(2), s(1)),
            s(1),
            "half of the worker timeout at least"
        );
    }

    fn presence(last_seen: Instant) -> Presence {
        Presence {
            last_seen,
            connected: true,
            removed: false,
            pending: false,
            held: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rule_follows_the_timeouts_and_a_hold_keeps_workers_inactive() {
        let mut l = Liveness::new(Duration::from_secs(2), Duration::from_secs(6));
        let p = presence(Instant::now());
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(l.state(&p, Instant::now()), WorkerState::Active);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.state(&p, Instant::now()), WorkerState::Inactive);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(l.state(&p, Instant::now()), WorkerState::Removed);
        l.hold_removals = true;
        assert_eq!(l.state(&p, Instant::now()), WorkerState::Inactive);
    }

    /// After a take-over, a worker that was Active stays so until it reconnects or the
    /// grace ends, and nothing is Removed for silence within it; then the rule applies.
    #[tokio::test(start_paused = true)]
    async fn after_a_take_over_workers_that_were_active_get_the_grace() {
        let s = Duration::from_secs;
        let mut l = Liveness::new(s(2), s(3)).with_failover_grace(s(4));
        let start = Instant::now();
        l.taken_over(start);
        let held = Presence {
            connected: false,
            held: true,
            ..presence(start)
        };
        let silent = Presence {
            held: false,
            ..held
        };
        tokio::time::advance(Duration::from_millis(3999)).await;
        assert_eq!(l.state(&held, Instant::now()), WorkerState::Active);
        assert_eq!(
            l.state(&silent, Instant::now()),
            WorkerState::Inactive,
            "not removed within the grace"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.state(&held, Instant::now()), WorkerState::Removed);
    }

    #[test]
    fn mass_removal_is_more_than_half_and_more_than_one() {
        assert!(
            !Liveness::is_mass_removal(1, 1),
            "a lone worker is not a mass"
        );
        assert!(!Liveness::is_mass_removal(1, 2));
        assert!(!Liveness::is_mass_removal(2, 4));
        assert!(Liveness::is_mass_removal(3, 4));
        assert!(Liveness::is_mass_removal(2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_far_above_the_check_interval_is_a_stall() {
        let mut g = StallGuard::new(Duration::from_millis(100), Instant::now());
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(g.ran(Instant::now()), None);
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(g.ran(Instant::now()), Some(Duration::from_secs(8)));
        assert_eq!(g.ran(Instant::now()), None, "once");
    }
}
