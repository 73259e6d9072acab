//! Cron schedules (`RELAY_SCHEDULE`, `SAGA_TIMEOUT_SCHEDULE`), as waits.

/// How long until `schedule`'s next tick (`fallback` when it has none).
pub(crate) fn until_next(schedule: &cron::Schedule, fallback: std::time::Duration) -> std::time::Duration {
    schedule.upcoming(chrono::Utc).next().and_then(|at| (at - chrono::Utc::now()).to_std().ok()).unwrap_or(fallback)
}
