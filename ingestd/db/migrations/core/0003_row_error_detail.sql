-- Which column a rejected row got wrong and what was wrong with it, for errors.csv
-- (also when its sidecars are rebuilt after a crash between commit and move).
ALTER TABLE ingestd.row_results
    ADD COLUMN error_field  text NOT NULL DEFAULT '',
    ADD COLUMN error_detail text NOT NULL DEFAULT '';
