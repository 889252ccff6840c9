"""Everything that talks SQL: pool, migrations, ledger, company schemas."""
