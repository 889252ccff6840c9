-- Files in hand right now, one row per claim, so `ingestd status` on any host sees
-- what every instance is working on. Written on autocommit connections of their own:
-- the file's transaction is invisible to others until it commits.
CREATE TABLE ingestd.in_hand (
    claim_id     text PRIMARY KEY,
    company      text NOT NULL,
    file         text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL,
    rows_done    bigint NOT NULL DEFAULT 0,
    bytes_done   bigint NOT NULL DEFAULT 0,
    bytes_total  bigint NOT NULL DEFAULT 0,
    stuck        boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX in_hand_company ON ingestd.in_hand (company, started_at);

-- `ingestd status`: the last failed file of a company, however far back.
CREATE INDEX files_company_failed ON ingestd.files (company, id DESC) WHERE status = 'failed';
