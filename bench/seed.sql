-- Realistic data for `make bench`: 1,000 products, 10,000 users (each with an address),
-- 100,000 approved orders of 3 products spread over them, and 5 heavy users with 400
-- orders each. Ids are deterministic so the load scripts can name them:
--   product i  00000000-0000-4000-8000-<i, 12 digits>   (i = 1..1000)
--   address i  20000000-0000-4000-8000-<i, 12 digits>   (i = 1..10000)
--   user i     10000000-0000-4000-8000-<i, 12 digits>   (i = 1..10000; 1..5 are heavy)
BEGIN;
INSERT INTO products (id, name, description, price, discount)
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'Product ' || i, 'bench',
       (1 + (i * 37) % 500)::numeric + 0.99, i % 30
  FROM generate_series(1, 1000) AS i;

INSERT INTO addresses (id, building_number, street_name, city, country)
SELECT ('20000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 1 + i % 200, 'Street ' || i, 'City', 'Country'
  FROM generate_series(1, 10000) AS i;

INSERT INTO users (id, username, address_id)
SELECT ('10000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'user' || i,
       ('20000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid
  FROM generate_series(1, 10000) AS i;

-- 98,000 orders over all users, and 2,000 for the five heavy ones.
CREATE TEMP TABLE seed_orders AS
SELECT gen_random_uuid() AS id,
       CASE WHEN n <= 2000 THEN 1 + n % 5 ELSE 1 + n % 10000 END AS u,
       n
  FROM generate_series(1, 100000) AS n;

INSERT INTO orders (id, user_id, delivery_address_id, payment_method, order_status, saga_status,
                    total_price, created_at)
SELECT o.id, ('10000000-0000-4000-8000-' || lpad(o.u::text, 12, '0'))::uuid,
       ('20000000-0000-4000-8000-' || lpad(o.u::text, 12, '0'))::uuid,
       'Card', 'New', 'Approved', 30, now() - make_interval(secs => 100000 - o.n)
  FROM seed_orders o;

INSERT INTO order_products (order_id, position, product_id, name, actual_price)
SELECT o.id, k, ('00000000-0000-4000-8000-' || lpad((1 + (o.n * 7 + k * 13) % 1000)::text, 12, '0'))::uuid,
       'Product ' || (1 + (o.n * 7 + k * 13) % 1000), 10
  FROM seed_orders o, generate_series(1, 3) AS k;
-- The seeded orders by number, for the pgbench scripts to pick one cheaply.
CREATE TABLE bench_orders AS SELECT n, id FROM seed_orders;
ALTER TABLE bench_orders ADD PRIMARY KEY (n);
COMMIT;
ANALYZE;
