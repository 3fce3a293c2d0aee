-- Migration 3: storage settings for the rows every commit group rewrites.
-- Never edit a released migration: add the next file.
--
-- Why: each commit group updates the high-water marks of its agents and the aggregate rows of
-- its runs and models, so a busy run's row gets a new version several times a second per
-- replica, and the dead versions pile up faster than autovacuum's defaults clean them (a
-- table qualifies only after 20% of it is dead, then vacuums throttled). Measured with
-- scripts/bench-postgres: after 60 s of `loadgen --max`, 16 run aggregates took 1,025 pages
-- (8 MB), every read of them scanned the lot, and PostgreSQL's CPU went from 3 s to 25 s per
-- 30 s run while ingest fell from 50,000 to 29,000 records/s. These tables are small (one row
-- per agent, run, model, node bucket), so vacuuming them unthrottled after every 1,000 dead
-- versions costs milliseconds; half-empty pages (fillfactor 50) leave room for the next
-- version on the same page, so updates stay HOT (no index entry) and pruning reclaims them.
--
-- The launcher's interval (autovacuum_naptime, default 1 min) is server-wide and cannot be
-- set here: docs/deploy.md recommends 10 s for the ledger's database.
ALTER TABLE ledger_hwm SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE ledger_run_agg SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE ledger_model_agg SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE ledger_unattributed SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);
