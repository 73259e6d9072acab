-- The outbox churns: every row is inserted, updated once when published, deleted after
-- the retention. Vacuum and analyze it early, so the relay's index scans skip few dead
-- entries and the planner knows the backlog's size.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000
);
