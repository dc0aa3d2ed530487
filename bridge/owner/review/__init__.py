"""`obscura review`: the owner's timeline of clips in the browser, decrypted only on the
owner's own computer (docs/review.md)."""
