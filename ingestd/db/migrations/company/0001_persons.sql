-- {schema} is replaced by the company's quoted schema identifier.

CREATE TABLE {schema}.persons (
    person_id           bigserial PRIMARY KEY,
    person_key          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    -- Deferrable so that a bulk UPDATE in which one person gives up an id and another
    -- takes it is checked at the end of the statement, not row by row.
    external_person_id  text UNIQUE DEFERRABLE INITIALLY IMMEDIATE,
    mdn                 text UNIQUE DEFERRABLE INITIALLY IMMEDIATE,
    vibes_device_id     text UNIQUE DEFERRABLE INITIALLY IMMEDIATE,
    carrier             text,
    custom              jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
