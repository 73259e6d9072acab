-- The transaction of one saga reply (saga/mod.rs, apply): lock the order, record the
-- reply in the inbox, move the statuses, read the order back, append OrderCreated.
\set n random(1, 100000)
SELECT id AS oid FROM bench_orders WHERE n = :n \gset
BEGIN;
SELECT id, user_id, order_status, saga_status, deleted_at FROM orders WHERE id = ':oid'::uuid FOR UPDATE;
INSERT INTO saga_inbox (message_id, order_id, reply, outcome)
VALUES (':oid' || ':' || gen_random_uuid(), ':oid'::uuid, 'Approved', 'applied') ON CONFLICT (message_id) DO NOTHING;
UPDATE orders SET saga_status = 'Approved', order_status = 'New' WHERE id = ':oid'::uuid;
SELECT id, user_id, order_status, saga_status, payment_method, serial_number, total_price,
       created_at, client_name, address, products FROM order_views WHERE id = ':oid'::uuid;
INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload, headers)
VALUES (gen_random_uuid(), ':oid'::uuid, 'Orders', 'Order.Bench', 'OrderCreated', '{"eventType":"OrderCreated"}', '{}');
COMMIT;
