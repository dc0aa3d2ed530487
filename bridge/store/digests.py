"""The digests an upload is checked against: SHA-256, and the ETag an S3 server will report.

obstore uploads a file larger than the bucket's part size in parts of exactly that size; the
server's ETag is then MD5(MD5(part 1) || MD5(part 2) ...) + "-N", otherwise the file's MD5.
`Hasher` computes both as bytes go by, so the spool can hash a clip while it is written (in the
recording thread) and the uploader need not read the file again before uploading it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class Digests:
    sha256: str
    etag: str | None  # the S3-style ETag this upload should produce, if asked for


class Hasher:
    """SHA-256 and, with a part size, the MD5s of each part (hashlib releases the GIL)."""

    def __init__(self, etag_part_size: int | None = None, *, with_md5: bool | None = None) -> None:
        self._sha = hashlib.sha256()
        self.with_md5 = etag_part_size is not None if with_md5 is None else with_md5
        # No part size but MD5s wanted: the bucket never splits (a single PUT's MD5).
        self.part_size = etag_part_size or (1 << 62)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._md5s: list[bytes] = []
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.size += len(view)
        if not self.with_md5:
            return
        while view:  # part boundaries need not align with writes
            take = min(len(view), self.part_size - self._in_part)
            self._md5.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self.part_size:
                self._md5s.append(self._md5.digest())
                self._md5, self._in_part = hashlib.md5(usedforsecurity=False), 0

    def digests(self) -> Digests:
        sha = self._sha.hexdigest()
        if not self.with_md5:
            return Digests(sha, None)
        md5s = list(self._md5s)
        if self._in_part or not md5s:
            md5s.append(self._md5.digest())
        if self.size > self.part_size:  # multipart: more than one part
            composite = hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest()
            return Digests(sha, f"{composite}-{len(md5s)}")
        return Digests(sha, md5s[0].hex())


def file_digests(path: Path, part_size: int | None, with_md5: bool) -> Digests:
    """SHA-256 of the file and the S3 ETag it should get, in one read (run it in a thread)."""
    hasher = Hasher(part_size, with_md5=with_md5)
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while chunk := f.read(_READ):
            hasher.update(chunk)
    return hasher.digests()
