"""What every benchmark needs: the medium checkpoint and a running sightline stack.

The stack is the one the integration tests use (``tests/stack.py``): a private Redis,
a scratch PostgreSQL database (SQLite when no server can be had), the API under gunicorn
and workers started as ``sightline worker`` processes.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.redis_server import RedisServer, free_port  # noqa: E402
from tests.services import postgres_server, scratch_database  # noqa: E402
from tests.stack import Stack  # noqa: E402
from worker.model.tiny import build_tiny_checkpoint  # noqa: E402

CACHE = ROOT / ".cache" / "bench"


def checkpoint(size: str = "medium") -> Path:
    """The random GLM-4V checkpoint of ``size``, built once into ``.cache/bench``."""
    path = CACHE / f"{size}-glm4v"
    if not (path / "config.json").exists():
        build_tiny_checkpoint(path, size=size, seed=0)  # type: ignore[arg-type]
    return path


@contextmanager
def running_stack(model: Path, settings: dict[str, str] | None = None) -> Iterator[Stack]:
    """A started :class:`Stack` on ``model``, its API and workers with ``settings``
    (``SIGHTLINE_…`` variables) over the tests' ones; everything stops on exit."""
    with ExitStack() as cleanup:
        workdir = Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sightline-bench-"))
        )
        redis = cleanup.enter_context(RedisServer(free_port()))
        try:
            admin = cleanup.enter_context(postgres_server())
            database = cleanup.enter_context(scratch_database(admin))
        except Exception as exc:  # no PostgreSQL here: the embedded default still measures
            print(f"(PostgreSQL unavailable: {exc}; using SQLite)")
            database = f"sqlite:///{workdir / 'bench.db'}"
        # The API as production runs it (sightline api's default worker count).
        stack = Stack(database, redis.url, workdir, model)
        stack.env.update(settings or {})
        stack.start(api_workers=None)
        cleanup.callback(stack.close)
        yield stack
