"""Files the demo camera draws with (see NOTICE.md for where each comes from)."""
