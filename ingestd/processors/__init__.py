"""Processors apply a parsed file to one company's data, inside the file's transaction."""
