-- How far the saga-worker has seen CustomerSaga drained: a probe the saga timeout
-- publishes into the queue records, when a worker takes it, the database time it was
-- sent. Every reply published before that time had been delivered by then (the queue
-- hands out in order), so an order whose answer was due before it and is still pending
-- was not answered in time, whatever backlog the queue holds now. One row, only raised.

-- A lock the migration waits for fails it (the Job retries) rather than queueing every
-- session behind it.
SET lock_timeout = '10s';
CREATE TABLE saga_reply_barrier (
    id        boolean     PRIMARY KEY DEFAULT true,
    passed_at timestamptz NOT NULL,
    CONSTRAINT saga_reply_barrier_one_row CHECK (id)
);
