"""Bundled detector models and their labels/notices (data; see models.json, NOTICE.md)."""
