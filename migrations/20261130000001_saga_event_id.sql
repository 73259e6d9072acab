-- The eventID of an order's first OrderCreateSaga. A re-request by the saga timeout
-- carries it as `originalEventID`, so the customer service can tell a re-request from a
-- new order and answer it without checking the customer twice.
ALTER TABLE orders ADD COLUMN saga_event_id uuid;
