//! The one retry policy of the system: exponential backoff with jitter, from backon.
//!
//! Every loop that waits before trying again (a broker or database reconnect, a reply
//! whose transaction failed, a cache invalidation, migrations at start-up) takes its
//! delays from here. Jitter matters once there are replicas: without it two relays and
//! two workers that lost the broker together retry together, every time, and hit it
//! with the same burst at each step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A named backoff: the first delay and the ceiling. Each delay is the exponential step
/// plus a random share of it (up to the same again), so replicas drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub first: Duration,
    pub max: Duration,
}

impl Policy {
    /// Reconnecting to RabbitMQ or PostgreSQL (relay lanes, the worker, `LISTEN`, the
    /// simulator).
    pub const RECONNECT: Policy = Policy { first: Duration::from_millis(500), max: Duration::from_secs(30) };
    /// Waiting for a database that is still starting (migrations, creating the database).
    pub const STARTUP: Policy = Policy { first: Duration::from_millis(250), max: Duration::from_secs(10) };
    /// A saga reply whose transaction failed, retried in place.
    pub const APPLY: Policy = Policy { first: Duration::from_millis(500), max: Duration::from_secs(30) };
    /// Housekeeping that failed (the outbox VACUUM): not again every 5 s.
    pub const HOUSEKEEPING: Policy = Policy { first: Duration::from_secs(30), max: Duration::from_secs(600) };
    /// A cache invalidation Redis did not take, retried until it does. The ceiling is
    /// part of `cache::STALENESS_BOUND`: keep them in step.
    pub const INVALIDATE: Policy = Policy { first: Duration::from_millis(100), max: Duration::from_secs(1) };

    /// The backon builder of this policy, with no limit on the number of tries (each
    /// caller decides when to give up).
    pub fn builder(self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    /// A fresh sequence of delays.
    pub fn backoff(self) -> Backoff {
        Backoff { policy: self, delays: self.builder().build() }
    }
}

/// The delays of one [`Policy`], for loops that sleep themselves (to race the sleep
/// against shutdown); [`Backoff::reset`] starts again from the first delay after a
/// success.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// The next delay; never runs out.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.policy.max * 2)
    }

    /// Back to the first delay, after the thing retried worked.
    pub fn reset(&mut self) {
        *self = self.policy.backoff();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_stay_within_it_with_jitter() {
        let mut backoff = Policy::RECONNECT.backoff();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        for (step, delay) in delays.iter().enumerate() {
            let base = (Policy::RECONNECT.first * 2u32.pow(step.min(16) as u32)).min(Policy::RECONNECT.max);
            assert!(*delay >= base && *delay <= base * 2, "step {step}: {delay:?} not in [{base:?}, {:?}]", base * 2);
        }
    }

    #[test]
    fn two_replicas_do_not_retry_in_lockstep() {
        // Two workers that lost the broker at the same moment: their schedules differ.
        let mut a = Policy::RECONNECT.backoff();
        let mut b = Policy::RECONNECT.backoff();
        let a: Vec<Duration> = (0..8).map(|_| a.next_delay()).collect();
        let b: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn reset_starts_again_from_the_first_delay() {
        let mut backoff = Policy::STARTUP.backoff();
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() >= Policy::STARTUP.max);
        backoff.reset();
        assert!(backoff.next_delay() <= Policy::STARTUP.first * 2);
    }
}
