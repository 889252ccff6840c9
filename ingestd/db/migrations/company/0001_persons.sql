-- {schema} is replaced by the company's quoted schema identifier.

CREATE TABLE {schema}.persons (
    person_id           bigserial PRIMARY KEY,
    person_key          uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    external_person_id  text UNIQUE,
    mdn                 text UNIQUE,
    vibes_device_id     text UNIQUE,
    carrier             text,
    custom              jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
