"""Chat templates and exact conversation encoding (labels for any Jinja template)."""
