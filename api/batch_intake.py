"""The network-bound part of a batch's intake, bounded in time and in bytes.

A batch may name thousands of callback URLs and ``image_url`` items. Without bounds one
request could hold gigabytes of downloads in memory, resolve every callback host one
after another, and keep its gunicorn thread for as long as slow servers like. Here:

- every network step of one request shares one :class:`IntakeDeadline`
  (``batch_intake_deadline_s``); an item not done by then is rejected
  (``intake_deadline``), the rest of the batch goes on;
- callback URLs are parsed once each (no DNS) and the SSRF guard resolves each distinct
  ``(scheme, host, port)`` once, on the request's thread pool;
- downloads run ``image_fetch_concurrency`` at a time, each bounded by
  ``image_fetch_timeout_s`` and what is left of the deadline; a download is normalised
  on its thread and its raw bytes dropped at once, and at most two downloads per thread
  wait to be stored, so memory stays bounded whatever the batch's size;
- downloads stop starting once ``batch_download_budget_bytes`` have been downloaded;
  items not started are rejected (``batch_download_budget``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from api.context import Services
from api.submission import normalise_upload
from shared.error_codes import ErrorCode
from shared.errors import PayloadTooLarge, SightlineError, ValidationFailed
from shared.fetch import fetch_image
from shared.images import NormalisedImage
from shared.ssrf import OutboundPolicy, parse_outbound_url


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded image, normalised, and the SHA-256 of the bytes as downloaded."""

    image: NormalisedImage
    source_sha256: str


# A finished download: bytes downloaded, and the image or the item's problem.
Fetched = tuple[int, FetchedImage | SightlineError]


class IntakeDeadline:
    """The moment (monotonic clock) by which a request's network steps must be done."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - time.monotonic())

    def missed(self, what: str) -> ValidationFailed:
        """The problem of an item whose ``what`` was not done in time."""
        return ValidationFailed(
            f"{what} within the batch's intake deadline of {self.seconds:g} s; "
            "submit this item again (in a smaller batch)",
            code=ErrorCode.INTAKE_DEADLINE,
        )


def vet_callbacks(
    policy: OutboundPolicy,
    pool: ThreadPoolExecutor,
    urls: Iterable[str],
    deadline: IntakeDeadline,
) -> dict[str, SightlineError | None]:
    """The SSRF guard's verdict (``policy``, bound to the submitting tenant) on each
    distinct URL in ``urls`` (``None``: allowed).

    URLs that parse to the same ``(scheme, host, port)`` share one check, so a batch
    whose 10,000 items call back to one host resolves it once; distinct hosts are
    checked concurrently on ``pool``. A host not checked by the deadline fails its URLs.
    """
    verdicts: dict[str, SightlineError | None] = {}
    groups: dict[tuple[str, str, int], list[str]] = {}
    for url in set(urls):
        try:
            parsed = parse_outbound_url(url, field="callback_url")
        except SightlineError as exc:
            verdicts[url] = exc
            continue
        groups.setdefault((parsed.scheme, parsed.host, parsed.port), []).append(url)
    checks = {pool.submit(_verdict, policy, members[0]): members for members in groups.values()}
    done, _ = wait(checks, timeout=deadline.remaining())
    for future, members in checks.items():
        verdict = future.result() if future in done else deadline.missed("callback_url not checked")
        verdicts.update(dict.fromkeys(members, verdict))
    return verdicts


def _verdict(policy: OutboundPolicy, url: str) -> SightlineError | None:
    try:
        policy.check(url, field="callback_url")
    except SightlineError as exc:
        return exc
    return None


def fetch_images(
    svc: Services,
    policy: OutboundPolicy,
    pool: ThreadPoolExecutor,
    urls: dict[int, str],
    deadline: IntakeDeadline,
) -> Iterator[tuple[int, FetchedImage | SightlineError]]:
    """Download (through ``policy``, bound to the submitting tenant) and normalise the
    image of each ``urls`` item (by index), yielding each one as it is ready (in no
    particular order); every index is yielded once, with its image or its problem. See
    the module docstring for the bounds."""
    settings = svc.settings
    window = 2 * settings.image_fetch_concurrency
    queue = list(reversed(urls.items()))
    running: dict[Future[Fetched], int] = {}
    spent = 0
    while queue or running:
        while queue and len(running) < window and spent < settings.batch_download_budget_bytes:
            left = deadline.remaining()
            if left <= 0:
                break
            index, url = queue.pop()
            running[pool.submit(_fetch_one, svc, policy, url, deadline)] = index
        if not running:
            break
        done, _ = wait(running, timeout=deadline.remaining(), return_when=FIRST_COMPLETED)
        if not done:
            break
        for future in done:
            index = running.pop(future)
            size, outcome = future.result()
            spent += size
            yield index, outcome
    for index in running.values():
        yield index, deadline.missed("image_url not fetched")
    for index, _ in queue:
        if spent >= settings.batch_download_budget_bytes:
            yield index, _budget_spent(settings.batch_download_budget_bytes)
        else:
            yield index, deadline.missed("image_url not fetched")


def _fetch_one(
    svc: Services, policy: OutboundPolicy, url: str, deadline: IntakeDeadline
) -> Fetched:
    settings = svc.settings
    left_s = deadline.remaining()
    try:
        raw = fetch_image(
            url,
            policy,
            max_bytes=settings.max_image_bytes,
            timeout_s=min(settings.image_fetch_timeout_s, left_s),
        )
    except SightlineError as exc:
        # Cut short by the intake's deadline rather than its own timeout: say which.
        if left_s < settings.image_fetch_timeout_s and deadline.remaining() <= 0:
            return 0, deadline.missed("image_url not fetched")
        return 0, exc
    try:
        image = normalise_upload(svc, raw)
    except SightlineError as exc:
        return len(raw), exc
    return len(raw), FetchedImage(image, hashlib.sha256(raw).hexdigest())


def _budget_spent(budget: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"this batch's image_url downloads reached the limit of {budget} bytes in all "
        "before this item's started; submit it again in another batch",
        code=ErrorCode.BATCH_DOWNLOAD_BUDGET,
    )
