-- A reply a worker hands back to CustomerSaga (a reject for retry, a hand-back at shutdown)
-- was delivered before, perhaps before a probe that has since passed: the barrier no longer
-- proves it was delivered. The worker resets the barrier first (`passed_at` to -infinity,
-- `reset_at` to now); a probe sent before the reset proves nothing and is not recorded.

-- A lock the migration waits for fails it (the Job retries) rather than queueing every
-- session behind it.
SET lock_timeout = '10s';

ALTER TABLE saga_reply_barrier ADD COLUMN reset_at timestamptz NOT NULL DEFAULT '-infinity';
