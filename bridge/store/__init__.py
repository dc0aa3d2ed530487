"""Where encrypted clips go: spool (durable local ciphertext), uploader, buckets, retention.

    bucket = open_bucket(config.bucket, config.credentials_file)
    spool = Spool(spool_dir, max_bytes)
    uploader = Uploader(spool, bucket, on_uploaded=...)

Nothing here sees plaintext: every byte handed to the spool is already age ciphertext.
"""
