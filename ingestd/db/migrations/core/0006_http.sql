-- The HTTP intake (docs/http.md): bearer tokens per company, and one row per request
-- whose body became (or may still become) a claim, for stored answers and retries.

-- Only the token's SHA-256 is kept: it is 256 random bits, so a plain hash suffices
-- (a slow password hash protects guessable secrets, which these are not).
CREATE TABLE ingestd.api_tokens (
    id            bigserial PRIMARY KEY,
    company       text NOT NULL REFERENCES ingestd.companies (id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT '',
    token_sha256  text NOT NULL UNIQUE,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE ingestd.http_requests (
    id               text PRIMARY KEY,      -- the request id the answers name
    company          text NOT NULL,
    route            text NOT NULL,         -- contacts | persons
    idempotency_key  text,
    claim_id         text NOT NULL UNIQUE,  -- the body's claim: ingestd.files.claim_id once applied
    status           integer,               -- an answer decided without the ledger (400, 413)
    answer           jsonb,                 -- its error object
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (company, idempotency_key)
);
