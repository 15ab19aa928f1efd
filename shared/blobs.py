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
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.error_codes import ErrorCode
from shared.errors import SightlineError


class BlobMissing(SightlineError):
    """A job refers to an image the store does not have."""

    status = 500
    code = ErrorCode.IMAGE_MISSING
    title = "Stored image missing"


class BlobStore:
    """Put and get immutable blobs by content hash.

    ``url`` is a directory path (or ``file://`` URL), or ``s3://bucket/prefix`` for S3 and
    S3-compatible storage (MinIO, Ceph, R2, moto) through boto3, whose I/O is plain
    sockets: it cooperates with the API's gevent worker, where an asyncio-based client
    (s3fs) cannot run. boto3 takes its configuration from the standard AWS sources
    (environment, shared config files, instance roles), so nothing S3-specific is a
    sightline setting: credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    (or a profile or role), the region from ``AWS_DEFAULT_REGION``, and a non-AWS endpoint
    from ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``), e.g. ``http://127.0.0.1:9000``.
    The bucket must exist.

    ``put`` is idempotent (the same bytes always give the same key) and atomic: a reader
    sees the whole blob or none. On a local disk the bytes go to a temporary name, are
    synced, then renamed over the key, and an existing key is not rewritten. On an object
    store every ``put`` is one PUT, and the object appears only once the upload is
    complete. Rewriting a key with identical bytes is harmless, and for mostly distinct
    images one request is cheaper than asking first whether the key exists.

    A put of a blob that exists marks it as just stored: on a local disk the file's
    modification time is refreshed, on an object store the PUT rewrites the object (its
    ``LastModified``). :meth:`delete_if_idle` reads that time, so a blob being submitted
    again is never deleted from under its new job (see :mod:`shared.blob_release`).

    Construction does no I/O beyond creating a local directory; a wrong endpoint, bucket or
    credentials surface at the first ``put``/``get`` as ``OSError``. ``get`` raises
    :class:`BlobMissing` only for a blob absent from a store that is there: a missing
    bucket, or a store directory gone (a volume not mounted), is an ``OSError``, an
    outage, so that a worker hands its jobs back rather than fail them for good.
    """

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self._s3: Any = None
        if parsed.scheme == "s3":
            self._bucket = parsed.netloc
            self._root = parsed.path.strip("/")
            self._s3 = boto3.session.Session().client(
                "s3",
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                    max_pool_connections=64,
                ),
            )
            return
        if parsed.scheme not in ("", "file"):
            raise ValueError(f"blob store {url!r}: a directory, file:// or s3:// URL")
        self._root = (parsed.path if parsed.scheme == "file" else url).rstrip("/")
        # Directories known to exist: a bulk put skips one mkdir syscall per blob.
        self._made: set[str] = set()
        os.makedirs(self._root, exist_ok=True)

    def key_for(self, sha256: str, suffix: str) -> str:
        """The key of a blob with hex digest ``sha256``: ``ab/<sha256><suffix>`` (256
        folders: few enough that a bulk write rarely has to create one)."""
        return f"{sha256[:2]}/{sha256}{suffix}"

    def put(self, data: bytes, suffix: str = ".png", *, durable: bool = True) -> tuple[str, str]:
        """Store ``data``; returns ``(key, sha256_hex)``. Errors of the underlying
        storage (disk full, access denied, endpoint unreachable) propagate as
        ``OSError``; a failed ``put`` never leaves anything under the key.

        On a local disk a durable put syncs the file before returning. Bulk writers pass
        ``durable=False`` for each blob and call :meth:`sync` once before committing the
        rows that name them: one sync instead of thousands."""
        sha256 = hashlib.sha256(data).hexdigest()
        key = self.key_for(sha256, suffix)
        if self._s3 is None:
            self._put_local(self._path(key), data, durable)
            return key, sha256
        try:
            self._s3.put_object(Bucket=self._bucket, Key=self._object(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise OSError(f"blob store: cannot put {key}: {exc}") from exc
        return key, sha256

    def sync(self) -> None:
        """Make every earlier non-durable local put durable (object stores: nothing to
        do, an upload is durable once it returns)."""
        if self._s3 is None:
            os.sync()

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; raises :class:`BlobMissing` if absent."""
        missing = BlobMissing(f"image {key} is not in the blob store")
        if self._s3 is None:
            try:
                with open(self._path(key), "rb") as handle:
                    return handle.read()
            except FileNotFoundError as exc:
                if not os.path.isdir(self._root):
                    raise OSError(f"blob store: its directory {self._root} is gone") from exc
                raise missing from exc
        try:
            answer = self._s3.get_object(Bucket=self._bucket, Key=self._object(key))
            data: bytes = answer["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise missing from exc
            raise OSError(f"blob store: cannot get {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise OSError(f"blob store: cannot get {key}: {exc}") from exc
        return data

    def delete_if_idle(self, key: str, stored_before: datetime) -> bool:
        """Delete the blob under ``key`` unless it was stored (or stored again) at or
        after ``stored_before``; True when it is gone (also when it was never there),
        False when a recent put kept it. Errors of the storage propagate as ``OSError``.

        On a local disk the file is first renamed away, atomically, and its time is read
        from the renamed file: a put that refreshed it before the rename puts it back, a
        put after the rename finds no file and writes a new one. On an object store the
        time is read (HEAD) and the object deleted next; a PUT landing between those two
        requests is the one window :mod:`shared.blob_release` documents."""
        if self._s3 is None:
            path = self._path(key)
            aside = f"{path}.{uuid.uuid4().hex}.deleting"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return True
            if os.stat(aside).st_mtime >= stored_before.timestamp():
                os.replace(aside, path)  # identical bytes if a put has rewritten it since
                return False
            os.unlink(aside)
            return True
        try:
            head = self._s3.head_object(Bucket=self._bucket, Key=self._object(key))
            if head["LastModified"] >= stored_before:
                return False
            self._s3.delete_object(Bucket=self._bucket, Key=self._object(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return True
            raise OSError(f"blob store: cannot delete {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise OSError(f"blob store: cannot delete {key}: {exc}") from exc
        return True

    def _put_local(self, path: str, data: bytes, durable: bool) -> None:
        try:
            os.utime(path)  # stored already: now it counts as just stored
            return
        except FileNotFoundError:
            pass
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

    def _object(self, key: str) -> str:
        return f"{self._root}/{key}" if self._root else key
