-- The embedded store's schema (version: SCHEMA_VERSION in store.py). Every statement is idempotent:
-- `open()` runs this file on every start.

CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    lease_expires_at INTEGER,
    pipe_id TEXT,
    pipe_name TEXT,
    datasource_name TEXT,
    concurrency_key TEXT NOT NULL,
    idempotency_key TEXT,
    revision INTEGER NOT NULL,
    doc TEXT NOT NULL,
    wire BLOB
);
-- One index per list filter, each led by workspace_id and ending in (created_at, id): the index order is the
-- page order, so no list query sorts.
CREATE INDEX IF NOT EXISTS jobs_by_workspace ON jobs (workspace_id, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_kind ON jobs (workspace_id, kind, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (workspace_id, status, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_pipe_id ON jobs (workspace_id, pipe_id, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_pipe_name ON jobs (workspace_id, pipe_name, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_datasource_name ON jobs (workspace_id, datasource_name, created_at, id);
-- Claims take the workspaces in turns (jobsd.domain.fairshare) and walk each one's waiting jobs FIFO: the
-- workspaces with waiting jobs are found by skipping along workspace_id (one index step per workspace), then one
-- workspace's jobs are read in created_at order. Partial (only waiting jobs, a small share of a full store) and
-- covering (the walk reads no table row until it has chosen), so skipping jobs of a full concurrency key is cheap.
-- (They replace jobs_claim / jobs_claim_by_kind, global FIFO orders of schema 2 files before fair share.)
DROP INDEX IF EXISTS jobs_claim;
DROP INDEX IF EXISTS jobs_claim_by_kind;
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (workspace_id, created_at, id, kind, concurrency_key, expires_at)
    WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS jobs_waiting_by_kind
    ON jobs (kind, workspace_id, created_at, id, concurrency_key, expires_at)
    WHERE status = 'waiting';
-- Running jobs per concurrency key. Partial like the lease index: a new or finished job touches neither, and
-- every index a write touches is one more page in the WAL at commit.
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (concurrency_key) WHERE status IN ('working', 'cancelling');
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires_at, id) WHERE status IN ('working', 'cancelling');
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (workspace_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS jobs_log (
    job_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    job_type TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    workspace_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    pipe_id TEXT,
    datasource_id TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    updated_at INTEGER NOT NULL,
    job_metadata TEXT NOT NULL,
    -- Keyed by the job's creation time first: a new row lands on the key's last pages (those the group's other
    -- rows dirty too), not on a random leaf of a table that keeps a month of rows. A read by job id takes the
    -- job's created_at from `jobs`, or from `jobs_gone` once the job is purged.
    PRIMARY KEY (created_at, job_id, revision)
);
CREATE INDEX IF NOT EXISTS jobs_log_by_workspace ON jobs_log (workspace_id, updated_at, job_id, revision);
CREATE INDEX IF NOT EXISTS jobs_log_by_age ON jobs_log (updated_at);
-- The purged jobs whose rows the log still keeps (it outlives them): the created_at that finds those rows by job
-- id. Written by the purge that deletes the job, dropped by the purge once `log_until` (when the job was purged,
-- later than any of its rows) is older than the log keeps.
CREATE TABLE IF NOT EXISTS jobs_gone (
    id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    log_until INTEGER NOT NULL,
    PRIMARY KEY (id, created_at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_gone_by_age ON jobs_gone (log_until);

CREATE TABLE IF NOT EXISTS workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    workspace_id TEXT,
    scopes TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Each workspace's turn: when a claim last served it, in microseconds (jobsd.domain.fairshare): one row per
-- workspace ever served, written by every claim in the claim's transaction (one small row).
CREATE TABLE IF NOT EXISTS turns (
    workspace_id TEXT PRIMARY KEY,
    served INTEGER NOT NULL
) WITHOUT ROWID;
