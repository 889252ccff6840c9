-- Subject contacts updated in place (issue 8); {schema} is the company's quoted schema.
--
-- An update section rewrites a contact's updatable columns and its treatments' ones,
-- none of them indexed. With room for a second version of each row on its page, the new
-- version stays there (a HOT update): no new entry in any of the table's four or two
-- indexes, which is most of an update's cost otherwise (measured: the batch UPDATEs of
-- 100,000 contacts and 200,000 treatments took half the time; 70 left too little room
-- for a whole file's updates and was no faster than 100). The price is pages half full.
-- Only pages written from now on leave the room: an existing company's stored contacts
-- keep theirs full until the table is rewritten (VACUUM FULL, CLUSTER); nothing else
-- changes for them.
ALTER TABLE {schema}.contacts SET (fillfactor = 50);
ALTER TABLE {schema}.contact_treatments SET (fillfactor = 50);
