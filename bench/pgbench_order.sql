-- The transaction one POST /api/v1/orders/ runs (orders/mod.rs, CreateOrder): the
-- product lookup, the order, its lines, and its outbox row. Its orders are paid 'Cash'
-- so that scripts/bench.py does not wait for sagas nobody asked for.
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
