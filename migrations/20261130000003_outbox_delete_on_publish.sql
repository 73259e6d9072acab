-- The outbox holds unpublished rows only: the relay deletes what the broker confirmed
-- and moves it, in the same statement, into `outbox_published`, kept there for
-- OUTBOX_RETENTION. Marking a row published was an UPDATE: a new tuple version and
-- entries in three indexes for each row, and a dead version for vacuum to clean from
-- five. A DELETE writes neither; the archive's row costs less than the new version did.
-- The database half of a relay step of 500 rows (pgbench, the step's statements without
-- the broker, 100,000 rows, 1 client): 12.1-13.5 ms marking, 7.9-8.8 ms moving, and
-- 5.6-5.9 ms deleting with no archive (docs/performance.md).

-- Rewritten before the first release (its old text, whose checksum db/schema.rs accepts,
-- did the same work with one correlated subquery per order and no index to serve it: on a
-- database of real size it ran for hours and the pool's 30 s statement_timeout cancelled
-- it). Now set-based, one pass over each table; `api migrate` runs it without a timeout.
-- A test migrates 100,000 orders and 200,000 published events
-- (relay::upgrading_a_database_of_real_size_finishes).

-- A lock the migration waits for fails it (the Job retries) rather than queueing every
-- session behind it.
SET lock_timeout = '10s';

-- Published rows, as they were published (the outbox's columns, less its retry state);
-- nothing reads them in the hot path.
CREATE TABLE outbox_published (LIKE outbox);
-- The table was created just above: empty, and read by nothing yet.
ALTER TABLE outbox_published
    -- squawk-ignore ban-drop-column
    DROP COLUMN next_attempt_at,
    -- squawk-ignore ban-drop-column
    DROP COLUMN last_error,
    -- squawk-ignore adding-not-nullable-field
    ALTER COLUMN published_at SET NOT NULL;

-- Orders placed before `saga_event_id` existed found their first request in the outbox;
-- it may soon be gone from there. One sort of the requests and one join, not a lookup
-- per order.
UPDATE orders
   SET saga_event_id = first.event_id
  FROM (SELECT DISTINCT ON (aggregate_id) aggregate_id, event_id
          FROM outbox
         WHERE event_type = 'OrderCreateSaga'
         ORDER BY aggregate_id, id) AS first
 WHERE orders.id = first.aggregate_id AND orders.saga_event_id IS NULL;

-- The published rows move in one pass each way; the archive's indexes are built after
-- (one sort each, instead of an index insertion per row).
INSERT INTO outbox_published (id, event_id, aggregate_id, exchange, routing_key, event_type, payload, headers,
                              created_at, published_at, attempts)
SELECT id, event_id, aggregate_id, exchange, routing_key, event_type, payload, headers,
       created_at, published_at, attempts
  FROM outbox WHERE published_at IS NOT NULL;
DELETE FROM outbox WHERE published_at IS NOT NULL;

-- Retention deletes the oldest. (A BRIN index cost the same per row here, but the space
-- retention frees is reused by new rows, which blurs a BRIN's ranges.)
CREATE INDEX outbox_published_retention_idx ON outbox_published (published_at);
-- The saga's timeout counts from when an order's request left (saga/mod.rs,
-- sweep_timeouts); only requests are indexed.
CREATE INDEX outbox_published_saga_request_idx ON outbox_published (aggregate_id, published_at)
    WHERE event_type = 'OrderCreateSaga';

-- The outbox holds only the unpublished rows from here (a few hundred at most in a
-- healthy system): its indexes drop and build in milliseconds, and CONCURRENTLY cannot run
-- in the migration's transaction.
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX outbox_unpublished_idx;
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX outbox_published_at_idx;
-- squawk-ignore require-concurrent-index-deletion
DROP INDEX outbox_unpublished_aggregate_idx;
-- A contract step in the same migration as its expand: this predates the first release and
-- the expand/contract rule (CHANGELOG.md); from 0.1.0 a drop comes a release after the
-- release that stops reading the column.
-- squawk-ignore ban-drop-column
ALTER TABLE outbox DROP COLUMN published_at;
-- Each order's events go out in order: a row is claimable when no earlier row of its
-- order is left in the outbox. The saga's sweep looks its requests up here too.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX outbox_aggregate_idx ON outbox (aggregate_id, id);
