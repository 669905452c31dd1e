"""Build tools (not installed): the bundled tiny model and data."""
