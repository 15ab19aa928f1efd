"""The Python client's event streams and the commands built on them, on the real stack:
``Client.stream`` (through a proxy that really drops the connection mid-answer),
``sightline ask`` and ``sightline submit --batch`` as processes.

The worker runs with fault injection so that ``[[slow]]`` prompts take 0.5 s per step
(every row of a step waits with them): a stream lasts long enough to act on. Every test
starts with no jobs, so no answer comes from the result cache (which streams only ``done``);
greedy decoding on the tiny checkpoint writes the same answer to the same prompt each run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

from cli.processes import sightline_command
from client import Client, StreamEvent
from shared.models import JobStatus
from tests.sse import answer, events
from tests.stack import Stack, make_image
from tests.waiting import wait_until

SLOW = {"fault_injection": "1"}


class CuttingProxy:
    """A TCP proxy on loopback to ``port`` that can drop every connection through it at
    once (:meth:`cut`), as a network failure would; records each request's head."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.heads: list[str] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._port))
            with self._lock:
                self._open += [downstream, upstream]
            threading.Thread(target=self._pump, args=(downstream, upstream, True)).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, False)).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                if requests and data.startswith((b"GET ", b"POST ", b"DELETE ")):
                    self.heads.append(data.split(b"\r\n\r\n")[0].decode())
                sink.sendall(data)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every open connection (reset, both ways)."""
        with self._lock:
            dropped, self._open = self._open, []
        for sock in dropped:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


def test_stream_deltas_add_up_to_the_result(pg_stack: Stack) -> None:
    pg_stack.start_worker(**SLOW)
    client = pg_stack.client()
    job_id = client.submit(make_image(41), "[[slow]] stream", max_new_tokens=8)["id"]

    received = list(client.stream(job_id))

    names = [event.event for event in received]
    final = client.get(job_id)
    assert names[0] == "status" and names[-1] == "done", names
    assert names.count("delta") > 1, names
    assert received[-1].data == final
    assert final["status"] == "succeeded" and final["result"]
    assert answer(received) == final["result"]


def test_a_dropped_connection_is_resumed_and_no_delta_comes_twice(pg_stack: Stack) -> None:
    pg_stack.start_worker(**SLOW)
    with closing(CuttingProxy(int(pg_stack.url.rsplit(":", 1)[1]))) as proxy:
        client = Client(proxy.url, pg_stack.key)
        job_id = client.submit(make_image(42), "[[slow]] drop", max_new_tokens=16)["id"]
        received: list[StreamEvent] = []
        cut_at = 0
        for event in client.stream(job_id):
            received.append(event)
            if not cut_at and [e.event for e in received].count("delta") == 3:
                cut_at = len(received)
                proxy.cut()  # the client is reading the stream: its connection breaks
        final = client.get(job_id)
    streams = [head for head in proxy.heads if f"/v1/jobs/{job_id}/events" in head]

    names = [event.event for event in received]
    print(f"\nevents: {names}")
    assert len(streams) == 2, "one reconnect"
    assert "Last-Event-ID" not in streams[0]
    resumed_from = re.search(r"(?im)^Last-Event-ID: (.+)$", streams[1])
    assert resumed_from is not None and resumed_from[1] == received[cut_at - 1].id
    assert "delta" in names[cut_at:], "text still came after the drop"
    assert "reset" not in names
    # The job ran throughout: the status the resumed stream repeats is left out.
    assert "status" not in names[cut_at:]
    assert answer(received) == final["result"]


def _ask(stack: Stack, *args: str) -> list[str]:
    return sightline_command("ask", *args, "--url", stack.url, "--key", stack.key)


def test_sightline_ask_prints_the_answer_as_it_is_written(pg_stack: Stack, tmp_path: Path) -> None:
    pg_stack.start_worker(**SLOW)
    image = tmp_path / "picture.png"
    image.write_bytes(make_image(43))
    command = _ask(pg_stack, str(image), "[[slow]] ask", "--max-new-tokens", "8")
    env = {**os.environ, **pg_stack.env}
    # Unbuffered: communicate() reads the pipe itself, past whatever a buffer held.
    pipe = subprocess.PIPE
    with subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe, bufsize=0) as process:
        assert process.stdout is not None
        first = process.stdout.read(1)  # returns once the first text is printed
        [job] = pg_stack.jobs()
        rest, errors = process.communicate(timeout=120)

    assert process.returncode == 0, errors.decode()
    assert job.status is JobStatus.RUNNING, "text was printed while the job ran"
    [final] = pg_stack.jobs()
    assert final.result
    assert (first + rest).decode() == final.result + "\n"


def test_sightline_ask_reports_a_failed_job(pg_stack: Stack, tmp_path: Path) -> None:
    pg_stack.start_worker(**SLOW)
    image = tmp_path / "picture.png"
    image.write_bytes(make_image(44))

    done = subprocess.run(
        _ask(pg_stack, str(image), "[[oom]] ask", "--json"),
        env={**os.environ, **pg_stack.env},
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 1, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "failed"
    assert f"{job['id']} failed: inference_error" in done.stderr


def _submit_batch(stack: Stack, tmp_path: Path) -> list[str]:
    """The command line of ``sightline submit --batch`` for three new images, results to
    ``tmp_path / "results.ndjson"``."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.png").write_bytes(make_image(50 + index))
    args = ["submit", str(folder), "--prompt", "caption", "--max-new-tokens", "3"]
    args += ["--batch", "--out", str(tmp_path / "results.ndjson")]
    return sightline_command(*args, "--url", stack.url, "--key", stack.key)


def _results(stack: Stack, out: Path) -> list[dict[str, str]]:
    """The results file, checked against the jobs in the database."""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    jobs = {str(job.id): job for job in stack.jobs()}
    assert [line["source"].rsplit("/", 1)[1] for line in lines] == ["0.png", "1.png", "2.png"]
    assert [line["status"] for line in lines] == ["succeeded"] * 3
    assert [line["result"] for line in lines] == [jobs[line["id"]].result for line in lines]
    return lines


def _api_log(stack: Stack) -> str:
    return (stack.workdir / "logs" / "api.log").read_text(errors="replace")


def test_sightline_submit_batch_follows_the_batch_stream(pg_stack: Stack, tmp_path: Path) -> None:
    pg_stack.start_worker(**SLOW)
    command = _submit_batch(pg_stack, tmp_path)

    def submit() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **pg_stack.env}
        return subprocess.run(
            command, env=env, capture_output=True, text=True, check=False, timeout=60
        )

    done = submit()
    assert done.returncode == 0, done.stderr
    lines = _results(pg_stack, tmp_path / "results.ndjson")
    [batch_id] = {str(job.batch_id) for job in pg_stack.jobs()}
    log = _api_log(pg_stack)
    assert f"GET /v1/batches/{batch_id}/events" in log
    assert not any(f"/v1/jobs/{line['id']}?wait" in log for line in lines), "no long-polls"

    # Run again: nothing new, and no stream of the new batch, which holds no job to end.
    again = submit()
    assert again.returncode == 0, again.stderr
    assert "submitted 0 new job(s)" in again.stderr
    assert _results(pg_stack, tmp_path / "results.ndjson") == lines


@contextmanager
def _streams_held(stack: Stack, path: str, count: int) -> Iterator[None]:
    """``count`` streams of ``path`` open, each past its first event."""
    opened = []
    try:
        for _ in range(count):
            response = stack.call("GET", path, stream=True, timeout=30)
            opened.append(response)
            assert response.status_code == 200, response.text
            next(events(response))
        yield
    finally:
        for response in opened:
            response.close()


def test_sightline_submit_batch_long_polls_when_streams_are_refused(
    pg_stack: Stack, tmp_path: Path
) -> None:
    # The test stack allows 4 streams per tenant (tests.stack: SIGHTLINE_STREAMS_PER_TENANT);
    # with no worker yet, the job they watch stays queued and they stay open.
    queued = pg_stack.client().submit(make_image(45), "queued", max_new_tokens=2)["id"]
    env = {**os.environ, **pg_stack.env}
    command = _submit_batch(pg_stack, tmp_path)
    errors: list[str] = []
    process = None
    try:
        with _streams_held(pg_stack, f"/v1/jobs/{queued}/events", 4):
            process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
            stderr = process.stderr
            reader = threading.Thread(target=lambda: errors.extend(stderr or []))
            reader.start()
            wait_until(
                lambda: any("waiting for its jobs one by one" in line for line in errors),
                timeout_s=60,
                what="sightline submit to give up on the batch stream",
            )
        pg_stack.start_worker(**SLOW)
        assert process.wait(timeout=120) == 0, errors
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
    reader.join()

    lines = _results(pg_stack, tmp_path / "results.ndjson")
    log = _api_log(pg_stack)
    assert all(f"/v1/jobs/{line['id']}?wait" in log for line in lines), "long-polled instead"
