"""A signed-in console session over plain HTTP, for tests that post the console's forms."""

from __future__ import annotations

import re

import requests


class ConsoleBrowser:
    """Signs in to ``url``'s console with ``key`` and posts forms with the session's CSRF
    token, as a browser would."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.session = requests.Session()
        page = self.session.get(f"{url}/console/sign-in", timeout=10)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        signed_in = self.session.post(
            f"{url}/console/sign-in",
            data={"api_key": key, "csrf_token": token[1]},
            allow_redirects=False,
            timeout=10,
        )
        assert signed_in.status_code == 302
        # Signing in starts a new session, with its own token.
        after = re.search(r'name="csrf-token" content="([^"]+)"', self.get("/ask").text)
        assert after is not None
        self.token = after[1]

    def get(self, path: str) -> requests.Response:
        return self.session.get(f"{self.url}/console{path}", timeout=10)

    def post(self, path: str, **form: str) -> requests.Response:
        """Post a form; follows the redirect to the page that shows what happened."""
        return self.session.post(
            f"{self.url}/console{path}", data={"csrf_token": self.token, **form}, timeout=10
        )
