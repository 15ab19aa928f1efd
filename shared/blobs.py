"""Content-addressed image store.

Images are stored once under their SHA-256 (``ab/cd/abcd….png``) and referenced from the
job row by that key; broker messages never carry image bytes. The location is a local
directory by default or any fsspec URL (``file://…``, later ``s3://bucket/prefix``).
"""

from __future__ import annotations

import hashlib
import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shared.errors import SightlineError


class BlobMissing(SightlineError):
    """A job refers to an image the store does not have."""

    status = 500
    code = "image_missing"
    title = "Stored image missing"


class BlobStore:
    """Put and get immutable blobs by content hash.

    ``put`` is idempotent (the same bytes give the same key and are written once) and
    atomic on a local disk (written to a temporary name, then renamed), so a crash never
    leaves a half-written blob under a real key.
    """

    def __init__(self, url: str) -> None:
        fs, root = fsspec.core.url_to_fs(url)
        self._fs = fs
        self._root = root.rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        if self._local:
            os.makedirs(self._root, exist_ok=True)

    def key_for(self, sha256: str, suffix: str) -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}{suffix}"

    def put(self, data: bytes, suffix: str = ".png") -> tuple[str, str]:
        """Store ``data``; returns ``(key, sha256_hex)``."""
        sha256 = hashlib.sha256(data).hexdigest()
        key = self.key_for(sha256, suffix)
        path = self._path(key)
        if self._fs.exists(path):
            return key, sha256
        if self._local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        else:
            self._fs.pipe_file(path, data)
        return key, sha256

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises :class:`BlobMissing` if absent."""
        try:
            data: bytes = self._fs.cat_file(self._path(key))
        except FileNotFoundError as exc:
            raise BlobMissing(f"image {key} is not in the blob store") from exc
        return data

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"
