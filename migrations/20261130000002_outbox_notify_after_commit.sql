-- The relays are woken after the commit, by the process that committed
-- (shared/src/outbox/wake.rs), no longer by a trigger inside the business transaction:
-- a NOTIFY in a transaction holds PostgreSQL's one notify lock through that
-- transaction's commit and WAL flush, so every order, delete and saga reply committed
-- one at a time (64 clients, bench/pgbench_order.sql: 1,646-1,670 tps without the
-- trigger, 1,061-1,103 with it).
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
