-- Requeue and retention. A ledger row is history and stays; these say what became of
-- the file it describes once it left done/ or failed/.
ALTER TABLE ingestd.files
    ADD COLUMN requeued_at timestamptz,   -- put back into inbox/ by `ingestd requeue`
    ADD COLUMN pruned_at   timestamptz;   -- file, sidecars and row results deleted by retention

-- A requeued file is a new drop that must be applied even if its content is known:
-- the next apply of this company's file with this content skips the duplicate check
-- once and deletes the row, in the same transaction.
CREATE TABLE ingestd.requeues (
    id           bigserial PRIMARY KEY,
    company      text NOT NULL,
    sha256       text NOT NULL,
    file_id      bigint NOT NULL REFERENCES ingestd.files (id),  -- the finished file put back
    requeued_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requeues_company_sha ON ingestd.requeues (company, sha256);

-- Retention walks finished files by age.
CREATE INDEX files_finished ON ingestd.files (finished_at)
    WHERE finished_at IS NOT NULL AND pruned_at IS NULL;
