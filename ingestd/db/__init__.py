"""The database layer: pool and embedded server, migrations, locks, and the SQL of the
ingestd schema's shared tables (ledger, companies, files in hand). A format's own tables
are written by its wing (``persons/``, ``contacts/``)."""
