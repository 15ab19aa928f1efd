"""Content-addressed image store: a local directory or S3-compatible object storage.

Images are stored once under their SHA-256 (``ab/abcd….png``) and referenced from the
job row by that key; broker messages never carry image bytes. Workers on many hosts share
the store, so nothing a worker needs lives on its own disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shared.error_codes import ErrorCode
from shared.errors import SightlineError


class BlobMissing(SightlineError):
    """A job refers to an image the store does not have."""

    status = 500
    code = ErrorCode.IMAGE_MISSING
    title = "Stored image missing"


class BlobStore:
    """Put and get immutable blobs by content hash.

    ``url`` is a directory path, a ``file://`` URL or any fsspec URL; for S3 and
    S3-compatible storage (MinIO, Ceph, R2, moto) ``s3://bucket/prefix`` through ``s3fs``.
    s3fs takes its configuration from the standard AWS sources (environment, shared config
    files, instance roles), so nothing S3-specific is a sightline setting: credentials come
    from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or a profile or role), the
    region from ``AWS_DEFAULT_REGION``, and a non-AWS endpoint from ``AWS_ENDPOINT_URL_S3``
    (or ``AWS_ENDPOINT_URL``), e.g. ``http://127.0.0.1:9000``. The bucket must exist.

    ``put`` is idempotent (the same bytes always give the same key) and atomic: a reader
    sees the whole blob or none. On a local disk the bytes go to a temporary name, are
    synced, then renamed over the key, and an existing key is not rewritten. On an object
    store every ``put`` is one upload (a single PUT; s3fs switches to a multipart upload
    from 100 MiB), and the object appears only once the upload is complete. Rewriting a
    key with identical bytes is harmless, and for mostly distinct images one request is
    cheaper than asking first whether the key exists.

    Construction does no I/O beyond creating a local directory; a wrong endpoint, bucket or
    credentials surface at the first ``put``/``get`` as the filesystem's own ``OSError``
    (a missing bucket reads as a missing blob: :class:`BlobMissing` from ``get``).
    """

    def __init__(self, url: str) -> None:
        fs, root = fsspec.core.url_to_fs(url)
        self._fs = fs
        self._root = root.rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        # Directories known to exist: a bulk put skips one mkdir syscall per blob.
        self._made: set[str] = set()
        if self._local:
            os.makedirs(self._root, exist_ok=True)

    def key_for(self, sha256: str, suffix: str) -> str:
        """The key of a blob with hex digest ``sha256``: ``ab/<sha256><suffix>`` (256
        folders: few enough that a bulk write rarely has to create one)."""
        return f"{sha256[:2]}/{sha256}{suffix}"

    def put(self, data: bytes, suffix: str = ".png", *, durable: bool = True) -> tuple[str, str]:
        """Store ``data``; returns ``(key, sha256_hex)``. Errors of the underlying
        filesystem (disk full, access denied, endpoint unreachable) propagate as
        ``OSError``; a failed ``put`` never leaves anything under the key.

        On a local disk a durable put syncs the file before returning. Bulk writers pass
        ``durable=False`` for each blob and call :meth:`sync` once before committing the
        rows that name them: one sync instead of thousands."""
        sha256 = hashlib.sha256(data).hexdigest()
        key = self.key_for(sha256, suffix)
        path = self._path(key)
        if self._local:
            self._put_local(path, data, durable)
        else:
            self._fs.pipe_file(path, data)
        return key, sha256

    def sync(self) -> None:
        """Make every earlier non-durable local put durable (object stores: nothing to
        do, an upload is durable once it returns)."""
        if self._local:
            os.sync()

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises :class:`BlobMissing` if absent."""
        try:
            data: bytes = self._fs.cat_file(self._path(key))
        except FileNotFoundError as exc:
            raise BlobMissing(f"image {key} is not in the blob store") from exc
        return data

    def _put_local(self, path: str, data: bytes, durable: bool) -> None:
        if os.path.exists(path):
            return
        folder = os.path.dirname(path)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                if durable:
                    # The job row that names this key is committed durably right after;
                    # without the sync a power cut could leave an empty file under the key.
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}"
