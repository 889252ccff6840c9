"""Formats: parse a dropped file into typed rows and row/file errors (one module per format)."""
