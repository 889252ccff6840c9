"""ingestd: partner file drops into PostgreSQL, exactly once."""

__version__ = "0.1.0"
