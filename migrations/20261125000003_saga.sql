-- What the saga worker needs: when the customer check was last requested and how many
-- times it was re-requested (the saga timeout), and an inbox of the replies applied.

ALTER TABLE orders
    ADD COLUMN saga_retries integer NOT NULL DEFAULT 0,
    ADD COLUMN saga_requested_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT orders_saga_retries_non_negative CHECK (saga_retries >= 0);

-- The timeout sweep looks for pending orders by when they were last requested.
CREATE INDEX orders_pending_saga_idx ON orders (saga_requested_at) WHERE saga_status = 'Pending';

-- Every reply the worker acted on, keyed by the message's id (or, for a reply without
-- one, by order and reply): a redelivered or duplicated reply finds its row and changes
-- nothing. Written in the same transaction as the transition it records.
CREATE TABLE saga_inbox (
    message_id  text        PRIMARY KEY,
    order_id    uuid        NOT NULL,
    reply       text        NOT NULL,
    outcome     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT saga_inbox_order_id_fkey FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE,
    CONSTRAINT saga_inbox_reply_known CHECK (reply IN ('Approved', 'Rejected')),
    -- applied: it moved the order; stale: the order had already left Pending.
    CONSTRAINT saga_inbox_outcome_known CHECK (outcome IN ('applied', 'stale'))
);
CREATE INDEX saga_inbox_order_id_idx ON saga_inbox (order_id);
CREATE INDEX saga_inbox_received_at_idx ON saga_inbox (received_at);
