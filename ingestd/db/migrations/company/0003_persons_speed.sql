-- Persons split in two for speed (issue 8); {schema} is the company's quoted schema.
--
-- persons_base is the old table renamed (no data moves): the ids (a unique index each),
-- the carrier, and in custom the fields a person was created with. persons_custom holds
-- the custom fields changed since, merged over those (a key there wins), with only a
-- primary key: an import that changes custom fields rewrites that narrow row instead of a
-- wide one with five index entries. The ids' unique indexes are partial (a NULL is never
-- indexed) and checked row by row: ingestd resolves every row in file order before it
-- writes, and writes an id handed from one person to another in two steps (see
-- ingestd/persons/store.py), so the end-of-statement check is not needed any more.
-- The view persons keeps the table's old shape for every reader and writer outside the
-- import (queries, operators, tests): INSERT, UPDATE and DELETE on it go to both tables.

ALTER TABLE {schema}.persons RENAME TO persons_base;

CREATE TABLE {schema}.persons_custom (
    person_id   bigint PRIMARY KEY,  -- persons_base.person_id
    custom      jsonb NOT NULL,      -- custom fields set since the person was created
    updated_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);  -- room on the page: an update can stay there (HOT), no index entry

ALTER TABLE {schema}.persons_base DROP CONSTRAINT persons_external_person_id_key;
ALTER TABLE {schema}.persons_base DROP CONSTRAINT persons_mdn_key;
ALTER TABLE {schema}.persons_base DROP CONSTRAINT persons_vibes_device_id_key;
CREATE UNIQUE INDEX persons_base_external_person_id_key
    ON {schema}.persons_base (external_person_id) WHERE external_person_id IS NOT NULL;
CREATE UNIQUE INDEX persons_base_mdn_key
    ON {schema}.persons_base (mdn) WHERE mdn IS NOT NULL;
CREATE UNIQUE INDEX persons_base_vibes_device_id_key
    ON {schema}.persons_base (vibes_device_id) WHERE vibes_device_id IS NOT NULL;

CREATE VIEW {schema}.persons AS
SELECT b.person_id, b.person_key, b.external_person_id, b.mdn, b.vibes_device_id, b.carrier,
       b.custom || COALESCE(c.custom, '{}') AS custom, b.created_at,
       GREATEST(b.updated_at, c.updated_at) AS updated_at
FROM {schema}.persons_base b LEFT JOIN {schema}.persons_custom c USING (person_id);

-- What an INSERT through the view leaves out gets the table's own defaults.
ALTER VIEW {schema}.persons
    ALTER COLUMN person_id SET DEFAULT nextval('{schema}.persons_person_id_seq'::regclass);
ALTER VIEW {schema}.persons ALTER COLUMN person_key SET DEFAULT gen_random_uuid();
ALTER VIEW {schema}.persons ALTER COLUMN custom SET DEFAULT '{}';
ALTER VIEW {schema}.persons ALTER COLUMN created_at SET DEFAULT now();
ALTER VIEW {schema}.persons ALTER COLUMN updated_at SET DEFAULT now();

CREATE FUNCTION {schema}.persons_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {schema}.persons_base (person_id, person_key, external_person_id, mdn,
                                           vibes_device_id, carrier, custom, created_at,
                                           updated_at)
        VALUES (NEW.person_id, NEW.person_key, NEW.external_person_id, NEW.mdn,
                NEW.vibes_device_id, NEW.carrier, NEW.custom, NEW.created_at, NEW.updated_at);
        RETURN NEW;
    END IF;
    DELETE FROM {schema}.persons_custom WHERE person_id = OLD.person_id;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM {schema}.persons_base WHERE person_id = OLD.person_id;
        RETURN OLD;
    END IF;
    UPDATE {schema}.persons_base SET person_id = NEW.person_id, person_key = NEW.person_key,
        external_person_id = NEW.external_person_id, mdn = NEW.mdn,
        vibes_device_id = NEW.vibes_device_id, carrier = NEW.carrier, custom = NEW.custom,
        created_at = NEW.created_at, updated_at = NEW.updated_at
    WHERE person_id = OLD.person_id;
    RETURN NEW;
END
$$;

CREATE TRIGGER persons_write INSTEAD OF INSERT OR UPDATE OR DELETE ON {schema}.persons
    FOR EACH ROW EXECUTE FUNCTION {schema}.persons_write();
