-- Migration 2: the ledger and the compliance engine's state (issue 15 §2), everything the
-- reference model (collector/src/ledger/memory_store.rs, `State`) holds, one table per map.
-- Never edit a released migration: add the next file.
--
-- Conventions, and why:
-- - Sequence numbers are u64 on the wire. They are NUMERIC(20,0), not bigint: an agent may
--   use the whole u64 range, and a bigint holding the u64 bit pattern would sort numbers
--   above 2^63 first, breaking every range read ("the agent's batches from seq n").
--   Audit indices and outbox seqs are the store's own counters, far below 2^63: bigint.
-- - Exact sums are NUMERIC(39,0) (u128 has 39 digits), written and read as text by the
--   store, never through a float.
-- - Documents are the same bytes the sled store keeps: aggregates, rollups, declarations,
--   registry entries, plans, agents, clocks, alerts, outbox items, audit entries and heads
--   as JSON; raw batches and rejected records as protobuf (the agent's records as sent).
--   bytea rather than jsonb: jsonb re-encodes numbers and key order, and the u128 sums and
--   the audit entries' bytes must round-trip exactly.
-- - Text keys are COLLATE "C": rows then sort by bytes, as the other stores' keys do, so
--   every listing has one order whatever the database's locale, and lock order (sorted keys)
--   is the same in every replica.
-- - The store reads and writes the document; the typed columns beside it are written from
--   it in the same statement, for SQL, dashboards and indices, and are never read back as
--   the truth.

-- The per-agent high-water mark: the row a batch locks (FOR UPDATE) to be applied once.
CREATE TABLE ledger_hwm (
    agent         text COLLATE "C" PRIMARY KEY,
    seq           numeric(20,0) NOT NULL CHECK (seq >= 0)
);

-- Raw batches: the applied records of each received batch, until rolled up.
CREATE TABLE ledger_raw (
    agent         text COLLATE "C" NOT NULL,
    first_seq     numeric(20,0) NOT NULL,
    -- The latest event the batch holds: rollups take the batches that ended before a cutoff.
    last_event_ms bigint NOT NULL,
    node          text COLLATE "C" NOT NULL,
    records       integer NOT NULL,
    batch         bytea NOT NULL,
    PRIMARY KEY (agent, first_seq)
);
CREATE INDEX ledger_raw_last_event ON ledger_raw (last_event_ms, agent, first_seq);

-- Quarantined records, never part of a total.
CREATE TABLE ledger_rejected (
    agent         text COLLATE "C" NOT NULL,
    seq           numeric(20,0) NOT NULL,
    reason        text COLLATE "C" NOT NULL,
    rejection     bytea NOT NULL,
    PRIMARY KEY (agent, seq)
);

-- Aggregates. The headline columns are over every stage (the Aggregate's `all()`): which
-- stages count is the stage policy's, which can change without rewriting the rows, so the
-- counted figure is the document's, read through the collector.
CREATE TABLE ledger_run_agg (
    model         text COLLATE "C" NOT NULL,
    run           text COLLATE "C" NOT NULL,
    doc           bytea NOT NULL,
    flop_low      numeric(39,0) NOT NULL,
    flop_central  numeric(39,0) NOT NULL,
    flop_high     numeric(39,0) NOT NULL,
    gpu_ms        numeric(39,0) NOT NULL,
    energy_mj     numeric(39,0) NOT NULL,
    records       bigint NOT NULL,
    PRIMARY KEY (model, run)
);

CREATE TABLE ledger_model_agg (
    model         text COLLATE "C" PRIMARY KEY,
    doc           bytea NOT NULL,
    flop_low      numeric(39,0) NOT NULL,
    flop_central  numeric(39,0) NOT NULL,
    flop_high     numeric(39,0) NOT NULL,
    gpu_ms        numeric(39,0) NOT NULL,
    energy_mj     numeric(39,0) NOT NULL,
    records       bigint NOT NULL
);

-- Work no run claimed, per (node, GPU type, UTC day since the epoch).
CREATE TABLE ledger_unattributed (
    node          text COLLATE "C" NOT NULL,
    gpu_type      text COLLATE "C" NOT NULL,
    day           bigint NOT NULL,
    doc           bytea NOT NULL,
    flop_low      numeric(39,0) NOT NULL,
    flop_central  numeric(39,0) NOT NULL,
    flop_high     numeric(39,0) NOT NULL,
    gpu_ms        numeric(39,0) NOT NULL,
    energy_mj     numeric(39,0) NOT NULL,
    records       bigint NOT NULL,
    PRIMARY KEY (node, gpu_type, day)
);

-- Distinct agents and nodes per run and per model: an insert that finds its row already
-- there does not raise the aggregate's count (ON CONFLICT DO NOTHING RETURNING).
CREATE TABLE ledger_run_agents (
    model         text COLLATE "C",
    run           text COLLATE "C",
    agent         text COLLATE "C",
    PRIMARY KEY (model, run, agent)
);
CREATE TABLE ledger_run_nodes (
    model         text COLLATE "C",
    run           text COLLATE "C",
    node          text COLLATE "C",
    PRIMARY KEY (model, run, node)
);
CREATE TABLE ledger_model_agents (
    model         text COLLATE "C",
    agent         text COLLATE "C",
    PRIMARY KEY (model, agent)
);
CREATE TABLE ledger_model_nodes (
    model         text COLLATE "C",
    node          text COLLATE "C",
    PRIMARY KEY (model, node)
);

-- What each run declared, latest wins.
CREATE TABLE ledger_declarations (
    model         text COLLATE "C" NOT NULL,
    run           text COLLATE "C" NOT NULL,
    doc           bytea NOT NULL,
    PRIMARY KEY (model, run)
);

-- Hourly rollups (hours since the epoch), kept for ever.
CREATE TABLE ledger_run_rollups (
    model         text COLLATE "C" NOT NULL,
    run           text COLLATE "C" NOT NULL,
    hour          bigint NOT NULL,
    doc           bytea NOT NULL,
    PRIMARY KEY (model, run, hour)
);
CREATE TABLE ledger_unattributed_rollups (
    node          text COLLATE "C" NOT NULL,
    gpu_type      text COLLATE "C" NOT NULL,
    hour          bigint NOT NULL,
    doc           bytea NOT NULL,
    PRIMARY KEY (node, gpu_type, hour)
);

-- The model registry and plan histories. A plan's scope is the registry's ('' run) or a
-- run's: `scope` 0 sorts the registry's first, as the store's PlanScope does.
CREATE TABLE ledger_registry (
    model         text COLLATE "C" PRIMARY KEY,
    doc           bytea NOT NULL
);
CREATE TABLE ledger_plans (
    model         text COLLATE "C" NOT NULL,
    scope         smallint NOT NULL CHECK (scope IN (0, 1)),
    run           text COLLATE "C" NOT NULL,
    doc           bytea NOT NULL,
    PRIMARY KEY (model, scope, run)
);

-- Agents' last Hello; the ledger's own settings (the stage policy).
CREATE TABLE ledger_agents (
    agent         text COLLATE "C" PRIMARY KEY,
    doc           bytea NOT NULL
);
CREATE TABLE ledger_meta (
    name          text COLLATE "C" PRIMARY KEY,
    doc           bytea NOT NULL
);

-- The compliance engine's state: written by the leader only (fenced by engine_lease).
CREATE TABLE compliance_clocks (
    model         text COLLATE "C" NOT NULL,
    threshold     text COLLATE "C" NOT NULL,
    doc           bytea NOT NULL,
    PRIMARY KEY (model, threshold)
);
CREATE TABLE compliance_alerts (
    model         text COLLATE "C" NOT NULL,
    threshold     text COLLATE "C" NOT NULL,
    doc           bytea NOT NULL,
    PRIMARY KEY (model, threshold)
);
-- One row per (sink, idempotency key): an enqueue finding its key leaves the row alone.
CREATE TABLE compliance_outbox (
    sink          text COLLATE "C" NOT NULL,
    key           text COLLATE "C" NOT NULL,
    seq           bigint NOT NULL,
    doc           bytea NOT NULL,
    PRIMARY KEY (sink, key)
);
CREATE INDEX compliance_outbox_seq ON compliance_outbox (seq);
CREATE TABLE compliance_meta (
    name          text COLLATE "C" PRIMARY KEY,
    value         bytea NOT NULL
);

-- The audit chain. Every appender, the ledger's and the engine's, locks the head row FOR
-- UPDATE inside its transaction, so appends are serialised and the chain stays linear
-- whatever the number of replicas. The head is kept apart from the log so that cutting
-- entries off the end is detected.
CREATE TABLE audit_log (
    idx           bigint PRIMARY KEY CHECK (idx >= 0),
    entry         bytea NOT NULL
);
CREATE TABLE audit_head (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    head          bytea NOT NULL
);
