-- The ledger and everything shared by all companies lives in schema ingestd.

CREATE TABLE ingestd.companies (
    id              text PRIMARY KEY,
    schema_name     text NOT NULL UNIQUE,
    default_region  text NOT NULL DEFAULT 'US',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ingestd.company_migrations (
    company     text NOT NULL REFERENCES ingestd.companies (id) ON DELETE CASCADE,
    version     integer NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (company, version)
);

CREATE TABLE ingestd.custom_fields (
    company   text NOT NULL REFERENCES ingestd.companies (id) ON DELETE CASCADE,
    position  integer NOT NULL,
    name      text NOT NULL,
    type      text NOT NULL,
    charset   text NOT NULL DEFAULT 'unicode',
    options   text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (company, name)
);

-- One row per claimed file, written in the same transaction as the file's rows:
-- its presence is the proof that the file was applied (or failed) exactly once.
CREATE TABLE ingestd.files (
    id                 bigserial PRIMARY KEY,
    company            text NOT NULL,
    name               text NOT NULL,
    claim_id           text NOT NULL UNIQUE,
    format             text,
    sha256             text NOT NULL,
    size               bigint NOT NULL,
    status             text NOT NULL CHECK (status IN ('done', 'failed')),
    rows               integer NOT NULL DEFAULT 0,
    accepted           integer NOT NULL DEFAULT 0,
    rejected           integer NOT NULL DEFAULT 0,
    rejected_by_class  jsonb NOT NULL DEFAULT '{}',
    error_class        text,
    error_message      text,
    duplicate_of       bigint REFERENCES ingestd.files (id),
    result             json NOT NULL DEFAULT '{}',    -- what result.json says (json keeps key order)
    meta               jsonb NOT NULL DEFAULT '{}',   -- what sidecars need (columns, delimiters)
    started_at         timestamptz NOT NULL,
    committed_at       timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,          -- set once the file is in done/ or failed/
    final_path         text
);
CREATE INDEX files_company_sha ON ingestd.files (company, sha256)
    WHERE status = 'done' AND duplicate_of IS NULL;
CREATE INDEX files_company_committed ON ingestd.files (company, committed_at DESC);
CREATE INDEX files_unfinished ON ingestd.files (company) WHERE finished_at IS NULL;

-- Per-record outcomes the sidecars need (all rejected rows; accepted contacts rows),
-- so sidecars can be rebuilt after a crash between commit and move.
CREATE TABLE ingestd.row_results (
    file_id      bigint NOT NULL REFERENCES ingestd.files (id) ON DELETE CASCADE,
    record       integer NOT NULL,
    accepted     boolean NOT NULL,
    ref          text,
    error_class  text,
    message      text,
    fields       text[] NOT NULL
);
CREATE INDEX row_results_file ON ingestd.row_results (file_id, record);

CREATE TABLE ingestd.carrier_cache (
    mdn          text PRIMARY KEY,
    carrier      text,
    error_class  text,
    message      text,
    checked_at   timestamptz NOT NULL DEFAULT now()
);
