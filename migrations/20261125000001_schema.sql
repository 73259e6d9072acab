-- The write model of order-service. Every rule the database can hold is a named
-- constraint, so the code can turn a violation into the right 4xx by its name.

CREATE TABLE products (
    id           uuid          PRIMARY KEY,
    name         text          NOT NULL,
    description  text          NOT NULL DEFAULT '',
    price        numeric(10,2) NOT NULL,
    discount     integer       NOT NULL,
    quantity     integer       NOT NULL DEFAULT 1,
    availability boolean       NOT NULL DEFAULT true,
    created_at   timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT products_name_key UNIQUE (name),
    CONSTRAINT products_name_not_blank CHECK (btrim(name) <> ''),
    CONSTRAINT products_price_non_negative CHECK (price >= 0),
    CONSTRAINT products_discount_percent CHECK (discount BETWEEN 0 AND 99),
    CONSTRAINT products_quantity_non_negative CHECK (quantity >= 0)
);
-- GET /products/ pages by price, then id.
CREATE INDEX products_price_id_idx ON products (price, id);

CREATE TABLE addresses (
    id              uuid        PRIMARY KEY,
    building_number integer     NOT NULL,
    street_name     text        NOT NULL,
    city            text        NOT NULL,
    country         text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT addresses_building_number_positive CHECK (building_number > 0),
    CONSTRAINT addresses_street_name_not_blank CHECK (btrim(street_name) <> ''),
    CONSTRAINT addresses_city_not_blank CHECK (btrim(city) <> ''),
    CONSTRAINT addresses_country_not_blank CHECK (btrim(country) <> '')
);

CREATE TABLE users (
    id         uuid        PRIMARY KEY,
    username   text        NOT NULL,
    address_id uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_address_id_fkey FOREIGN KEY (address_id) REFERENCES addresses (id),
    CONSTRAINT users_username_not_blank CHECK (btrim(username) <> '')
);

-- serialNumber runs 1..100 and starts again. A sequence hands out distinct values to
-- concurrent transactions without locking, which a max()+1 would not.
CREATE SEQUENCE order_serial_number AS integer MINVALUE 1 MAXVALUE 100 CYCLE;

CREATE TABLE orders (
    id                  uuid          PRIMARY KEY,
    user_id             uuid          NOT NULL,
    delivery_address_id uuid          NOT NULL,
    payment_method      text          NOT NULL,
    order_status        text          NOT NULL DEFAULT 'New',
    saga_status         text          NOT NULL DEFAULT 'Pending',
    serial_number       integer       NOT NULL DEFAULT nextval('order_serial_number'),
    total_price         numeric(13,2) NOT NULL,
    created_at          timestamptz   NOT NULL DEFAULT now(),
    deleted             boolean       NOT NULL DEFAULT false,
    deleted_at          timestamptz,
    CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT orders_delivery_address_id_fkey FOREIGN KEY (delivery_address_id) REFERENCES addresses (id),
    CONSTRAINT orders_payment_method_known CHECK (payment_method IN ('Online', 'Card', 'Cash')),
    CONSTRAINT orders_order_status_known
        CHECK (order_status IN ('New', 'InProcessing', 'Processed', 'Delivered', 'Canceled')),
    CONSTRAINT orders_saga_status_known CHECK (saga_status IN ('Pending', 'Approved', 'Rejected')),
    CONSTRAINT orders_serial_number_range CHECK (serial_number BETWEEN 1 AND 100),
    CONSTRAINT orders_total_price_non_negative CHECK (total_price >= 0),
    CONSTRAINT orders_deleted_at_set_when_deleted CHECK (deleted = (deleted_at IS NOT NULL)),
    -- Only an approved order can be soft-deleted.
    CONSTRAINT orders_deleted_only_when_approved CHECK (NOT deleted OR saga_status = 'Approved')
);
-- GET /orders/ and GET /orders/user/{id} list approved, live orders by (createdAt, OrderID).
CREATE INDEX orders_visible_created_idx ON orders (created_at, id)
    WHERE saga_status = 'Approved' AND NOT deleted;
CREATE INDEX orders_visible_user_created_idx ON orders (user_id, created_at, id)
    WHERE saga_status = 'Approved' AND NOT deleted;

-- One line per product of an order. Name and price are those the order was placed
-- with: renaming a product later does not rewrite an order's history.
CREATE TABLE order_products (
    order_id     uuid          NOT NULL,
    position     integer       NOT NULL,
    product_id   uuid          NOT NULL,
    name         text          NOT NULL,
    actual_price numeric(10,2) NOT NULL,
    CONSTRAINT order_products_pkey PRIMARY KEY (order_id, position),
    CONSTRAINT order_products_order_id_fkey FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE,
    CONSTRAINT order_products_product_id_fkey FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT order_products_product_once UNIQUE (order_id, product_id),
    CONSTRAINT order_products_actual_price_non_negative CHECK (actual_price >= 0)
);

-- Transactional outbox: a row is written in the same transaction as the change it
-- announces; the relay publishes it later. `payload` is `json`, not `jsonb`, because
-- the event body is published byte for byte and must keep its key order (eventID first).
CREATE TABLE outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid        NOT NULL,
    aggregate_id uuid        NOT NULL,
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    event_type   text        NOT NULL,
    payload      json        NOT NULL,
    -- AMQP headers to publish with the event, e.g. {"traceparent": "00-…"}.
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    CONSTRAINT outbox_event_id_key UNIQUE (event_id),
    CONSTRAINT outbox_attempts_non_negative CHECK (attempts >= 0)
);
-- The relay scans unpublished rows in insertion order; retention deletes old published ones.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

-- The read model of an order, in the shape the API returns it (CQRS read side): the
-- joins and the product lines in one place, so every order query stays a one-liner.
-- Postgres inlines the view, so the partial indexes above still serve the list queries.
CREATE VIEW order_views AS
SELECT o.id,
       o.user_id,
       o.order_status,
       o.saga_status,
       o.payment_method,
       o.serial_number,
       o.total_price,
       o.created_at,
       o.deleted,
       u.username AS client_name,
       concat_ws(', ', a.country, a.city, a.street_name, a.building_number) AS address,
       (SELECT coalesce(json_agg(json_build_object(
                    'productID', op.product_id,
                    'name', op.name,
                    'actualPrice', op.actual_price::text) ORDER BY op.position), '[]'::json)
          FROM order_products op
         WHERE op.order_id = o.id) AS products
  FROM orders o
  JOIN users u ON u.id = o.user_id
  JOIN addresses a ON a.id = o.delivery_address_id;
