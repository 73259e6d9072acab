-- What the outbox relay needs: a retry time per row and a wake-up after commits.

-- A row that failed to publish waits until then (exponential backoff).
ALTER TABLE outbox ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();

-- The relay claims the oldest unpublished row of each aggregate: it looks rows up by
-- aggregate, in id order, among the unpublished ones.
CREATE INDEX outbox_unpublished_aggregate_idx ON outbox (aggregate_id, id) WHERE published_at IS NULL;

-- NOTIFY is delivered when the inserting transaction commits, so a relay woken by it
-- finds the rows; one notification per statement is enough.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
