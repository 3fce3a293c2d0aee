-- Migration 1: the bookkeeping of migrations, and the compliance engine's lease.
-- Applied once, under the migration lock, in one transaction with its schema_migrations row.
-- Never edit a released migration: its checksum is recorded, and a collector refuses a
-- database whose applied migrations differ from its own. Add a new file instead.

CREATE TABLE schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    -- SHA-256 of the migration's SQL, hex.
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    -- The flopmeter version that applied it.
    applied_by text        NOT NULL
);

-- One row per leased role ('compliance-engine'). The epoch is the fencing token: it grows by
-- one at every acquisition, and every write only the holder may do locks this row and checks
-- it. expires_at is in the database's time, so the replicas' clocks do not matter.
CREATE TABLE engine_lease (
    name        text        PRIMARY KEY,
    holder      text,
    epoch       bigint      NOT NULL CHECK (epoch > 0),
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL
);
