-- The database half of one relay step (outbox/relay.rs, relay_batch): claim 500 head
-- rows and mark them published, without the broker in between.
WITH claimed AS (
    SELECT id FROM outbox AS o
     WHERE published_at IS NULL AND next_attempt_at <= now()
       AND NOT EXISTS (SELECT 1 FROM outbox AS earlier
                        WHERE earlier.aggregate_id = o.aggregate_id AND earlier.published_at IS NULL AND earlier.id < o.id)
     ORDER BY id LIMIT 500
       FOR UPDATE OF o SKIP LOCKED)
UPDATE outbox SET published_at = now(), attempts = attempts + 1, last_error = NULL
  FROM claimed WHERE outbox.id = claimed.id;
