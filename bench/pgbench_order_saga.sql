-- The database work one POST /api/v1/orders/ causes when its saga runs, for the
-- like-for-like baseline of the 1-connection row: the order's transaction
-- (pgbench_order.sql) and then its saga reply's (pgbench_saga.sql: lock, inbox, statuses,
-- read back, OrderCreated), one after the other, as the api and the worker commit them.
-- The running relay publishes and marks both outbox rows, as it does the api's. What it
-- leaves out is the broker's hops (the request, the simulator's reply).
\set p random(1, 998)
\set u random(6, 10000)
BEGIN;
SELECT gen_random_uuid() AS oid \gset
SELECT id, name, price, discount FROM products
 WHERE id = ANY(ARRAY[('00000000-0000-4000-8000-' || lpad(:p::text, 12, '0'))::uuid,
                      ('00000000-0000-4000-8000-' || lpad((:p + 1)::text, 12, '0'))::uuid,
                      ('00000000-0000-4000-8000-' || lpad((:p + 2)::text, 12, '0'))::uuid])
   FOR KEY SHARE;
INSERT INTO orders (id, user_id, delivery_address_id, payment_method, total_price)
VALUES (':oid'::uuid, ('10000000-0000-4000-8000-' || lpad(:u::text, 12, '0'))::uuid,
        ('20000000-0000-4000-8000-' || lpad(:u::text, 12, '0'))::uuid, 'Cash', 90);
INSERT INTO order_products (order_id, position, product_id, name, actual_price)
SELECT ':oid'::uuid, line.position, line.product_id, line.name, line.actual_price
  FROM UNNEST(ARRAY[('00000000-0000-4000-8000-' || lpad(:p::text, 12, '0'))::uuid,
                    ('00000000-0000-4000-8000-' || lpad((:p + 1)::text, 12, '0'))::uuid,
                    ('00000000-0000-4000-8000-' || lpad((:p + 2)::text, 12, '0'))::uuid],
              ARRAY['a', 'b', 'c'], ARRAY[30, 30, 30]::numeric[])
       WITH ORDINALITY AS line(product_id, name, actual_price, position);
INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload, headers)
VALUES (gen_random_uuid(), ':oid'::uuid, 'Orders', 'Order.Bench', 'OrderCreateSaga',
        ('{"eventID":"' || gen_random_uuid() || '","eventType":"OrderCreateSaga","orderID":"' || ':oid' || '"}')::json,
        '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}');
COMMIT;
BEGIN;
SELECT id, user_id, order_status, saga_status, deleted_at FROM orders WHERE id = ':oid'::uuid FOR UPDATE;
INSERT INTO saga_inbox (message_id, order_id, reply, outcome)
VALUES (':oid' || ':reply', ':oid'::uuid, 'Approved', 'applied') ON CONFLICT (message_id) DO NOTHING;
UPDATE orders SET saga_status = 'Approved', order_status = 'New' WHERE id = ':oid'::uuid;
SELECT id, user_id, order_status, saga_status, payment_method, serial_number, total_price,
       created_at, client_name, address, products FROM order_views WHERE id = ':oid'::uuid;
INSERT INTO outbox (event_id, aggregate_id, exchange, routing_key, event_type, payload, headers)
VALUES (gen_random_uuid(), ':oid'::uuid, 'Orders', 'Order.Bench', 'OrderCreated', '{"eventType":"OrderCreated"}', '{}');
COMMIT;
