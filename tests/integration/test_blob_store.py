"""The blob store on a local directory and on a real S3 API served on loopback (moto).

``s3_blob_url`` is session-scoped so the whole integration suite can later run with its
blob store on S3: it starts moto's S3 server once, points every AWS client in this
process and in every process it starts at it through the standard environment
variables, and yields an ``s3://`` URL whose bucket exists.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import pytest

from shared.blobs import BlobMissing, BlobStore


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, s3_blob_url: str) -> Iterator[str]:
    """A fresh, empty store location per test: a directory, or a new prefix in the bucket."""
    if request.param == "local":
        yield str(tmp_path / "blobs")
    else:
        yield f"{s3_blob_url}/{uuid.uuid4().hex}"


def _objects(url: str) -> list[str]:
    """Every file under ``url``, listed by fsspec afresh (no listings cache)."""
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    return sorted(fs.find(root)) if fs.exists(root) else []


def test_put_then_get_returns_the_same_bytes_under_their_hash(store_url: str) -> None:
    store = BlobStore(store_url)
    data = b"\x89PNG fake image bytes"

    key, sha256 = store.put(data)

    assert sha256 == hashlib.sha256(data).hexdigest()
    assert key == f"{sha256[:2]}/{sha256}.png"
    assert store.get(key) == data
    # Another store on the same URL (another process, another host) sees it too.
    assert BlobStore(store_url).get(key) == data


def test_put_is_idempotent_and_leaves_one_object_per_content(store_url: str) -> None:
    store = BlobStore(store_url)

    first = store.put(b"same bytes", suffix=".jpg")
    second = store.put(b"same bytes", suffix=".jpg")
    other = store.put(b"other bytes", suffix=".jpg")

    assert first == second
    assert other != first
    # Exactly the two blobs: no temporary files, no duplicates.
    names = [name.rsplit("/", 1)[-1] for name in _objects(store_url)]
    assert names == sorted([f"{first[1]}.jpg", f"{other[1]}.jpg"])
    assert store.get(first[0]) == b"same bytes"


def test_get_of_an_absent_key_raises_blob_missing(store_url: str) -> None:
    store = BlobStore(store_url)
    store.put(b"something else")
    absent = store.key_for("0" * 64, ".png")

    with pytest.raises(BlobMissing) as raised:
        store.get(absent)

    assert raised.value.code == "image_missing"
    assert absent in str(raised.value)


def test_a_store_gone_as_a_whole_is_an_outage_not_a_missing_image(
    store_url: str, s3_blob_url: str
) -> None:
    # A volume not mounted, a bucket deleted or misnamed: every image would read as
    # missing, and a worker fails a missing image's job for good (image_undecodable),
    # where an outage's jobs go back to the queue.
    store = BlobStore(store_url)
    key, _ = store.put(b"an image")
    if store_url.startswith("s3://"):
        store = BlobStore(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/blobs")
    else:
        shutil.rmtree(store_url)

    with pytest.raises(OSError) as raised:
        store.get(key)

    assert not isinstance(raised.value, BlobMissing)


def test_s3_blobs_live_in_the_bucket_not_on_local_disk(
    s3_blob_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"{s3_blob_url}/{uuid.uuid4().hex}"

    key, _ = BlobStore(url).put(b"remote bytes")

    assert list(tmp_path.iterdir()) == [], "an S3 store must write nothing locally"
    assert _objects(url) == [f"{url.removeprefix('s3://')}/{key}"]


def test_a_child_process_reads_s3_blobs_with_only_the_environment(s3_blob_url: str) -> None:
    """API and workers are separate processes: the endpoint and credentials must reach
    them through the environment alone, as they do in the integration suite."""
    url = f"{s3_blob_url}/{uuid.uuid4().hex}"
    key, _ = BlobStore(url).put(b"shared across processes")
    code = (
        "import sys; from shared.blobs import BlobStore; "
        "sys.stdout.buffer.write(BlobStore(sys.argv[1]).get(sys.argv[2]))"
    )

    done = subprocess.run(
        [sys.executable, "-c", code, url, key], capture_output=True, check=False, timeout=60
    )

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"shared across processes"


def test_delete_if_idle_keeps_a_blob_stored_again_since_and_deletes_an_idle_one(
    store_url: str,
) -> None:
    store = BlobStore(store_url)
    key, _ = store.put(b"a picture two tenants sent")
    before_put = datetime.now(UTC) - timedelta(hours=1)

    kept = store.delete_if_idle(key, before_put)  # stored after the cutoff: a new job's
    deleted = store.delete_if_idle(key, datetime.now(UTC) + timedelta(seconds=5))

    assert kept is False and deleted is True
    with pytest.raises(BlobMissing):
        store.get(key)
    assert store.delete_if_idle(key, datetime.now(UTC)) is True  # already gone
    assert _objects(store_url) == []


def test_putting_an_existing_local_blob_again_marks_it_as_just_stored(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "blobs"))
    key, _ = store.put(b"stored long ago")
    path = tmp_path / "blobs" / key
    long_ago = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(path, (long_ago, long_ago))
    cutoff = datetime.now(UTC) - timedelta(hours=1)

    store.put(b"stored long ago")  # a new submission of the same image

    assert store.delete_if_idle(key, cutoff) is False
    assert store.get(key) == b"stored long ago"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing left aside
