-- Several instances on one landing root: who is alive, and who holds which company.
-- Heartbeats and expiry use the database clock (now()), so host clocks do not matter.
CREATE TABLE ingestd.instances (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    backend_pid   integer,           -- the heartbeat connection's session
    expired_at    timestamptz,       -- set by the live peer that took its companies
    expired_by    text
);

-- One row per company ever held; instance_id NULL when free. The epoch only grows, so
-- a worker that lost its lease can tell, even if its instance holds the company again.
CREATE TABLE ingestd.company_leases (
    company       text PRIMARY KEY,
    instance_id   text,
    epoch         bigint NOT NULL,
    acquired_at   timestamptz NOT NULL DEFAULT now(),
    backend_pid   integer            -- the session doing the company's work
);
CREATE INDEX company_leases_instance ON ingestd.company_leases (instance_id)
    WHERE instance_id IS NOT NULL;
