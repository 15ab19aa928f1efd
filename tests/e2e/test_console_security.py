"""The console's protections over plain HTTP (no browser needed, so these run even where
Chromium is missing): CSRF tokens, anti-framing headers, the session cookie."""

from __future__ import annotations

import re

import requests

from shared.models import JobStatus
from tests.stack import Stack, make_image


def test_csrf_and_clickjacking_protection(pg_stack: Stack) -> None:
    """State-changing requests without the session's CSRF token are refused (and change
    nothing); pages forbid framing; the session cookie holds no key and is HttpOnly,
    SameSite=Lax; a job's event stream needs a signed-in session. Plain HTTP: no browser
    needed."""
    job_id = pg_stack.client().submit(make_image(4), "stays queued")["id"]
    browser = requests.Session()
    page = browser.get(f"{pg_stack.url}/console/sign-in", timeout=10)
    assert page.headers["X-Frame-Options"] == "DENY"
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    unsigned = browser.get(f"{pg_stack.url}/console/api/jobs/{job_id}/events", timeout=10)
    assert unsigned.status_code == 401, "no stream without a console session"
    assert unsigned.headers["Content-Type"] == "application/problem+json"
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None

    refused = browser.post(f"{pg_stack.url}/console/sign-in", data={"api_key": pg_stack.key})
    assert refused.status_code == 403 and "Request refused" in refused.text
    signed_in = browser.post(
        f"{pg_stack.url}/console/sign-in",
        data={"api_key": pg_stack.key, "csrf_token": token[1]},
        allow_redirects=False,
    )
    assert signed_in.status_code == 302
    cookie = signed_in.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and pg_stack.key not in cookie

    cancel = f"{pg_stack.url}/console/jobs/{job_id}/cancel"
    assert browser.post(cancel, timeout=10).status_code == 403
    assert browser.post(cancel, data={"csrf_token": "forged"}, timeout=10).status_code == 403
    submit = browser.post(
        f"{pg_stack.url}/console/api/jobs",
        files={"image": ("a.png", make_image(5))},
        data={"prompt": "forged"},
        timeout=10,
    )
    assert submit.status_code == 403
    assert submit.headers["Content-Type"] == "application/problem+json"
    assert submit.json()["code"] == "csrf_failed"
    assert [job.status for job in pg_stack.jobs()] == [JobStatus.QUEUED]
