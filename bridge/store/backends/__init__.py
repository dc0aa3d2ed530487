"""Bucket backends: file (our own, fsync'd), s3 and gcs/azure (obstore)."""
