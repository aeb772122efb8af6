"""Who may use a console that listens beyond loopback: a holder of the API key.

A script sends the key itself (`Authorization: Bearer KEY`); a browser logs in once with a
form and then carries a session cookie. The cookie is an HMAC of the key under a salt
drawn when the node starts: it proves the key was given without being the key, and it
stops working when the node restarts or the key changes.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import os
from pathlib import Path

COOKIE = "mesh_llm_session"
LOGIN_PAGE = Path(__file__).parent / "static" / "login.html"
_ERROR_SLOT = "<!--error-->"


class ConsoleKey:
    """The check for one key; `session` is the cookie value that stands for it."""

    def __init__(self, key: str, salt: bytes | None = None) -> None:
        self._key = key.encode()
        self._salt = salt if salt is not None else os.urandom(32)
        self.session = hmac.new(self._salt, b"mesh-llm console session\0" + self._key,
                                hashlib.sha256).hexdigest()

    def key_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._key)

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        """A request with the right Bearer key or the right session cookie."""
        if authorization is not None:
            scheme, _, given = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.key_matches(given.strip()):
                return True
        return cookie is not None and hmac.compare_digest(cookie.encode(),
                                                          self.session.encode())


def login_page(error: str | None = None) -> str:
    """The self-contained login form (no external assets), with `error` shown if given."""
    page = LOGIN_PAGE.read_text(encoding="utf-8")
    if error:
        page = page.replace(_ERROR_SLOT, f'<p class="error" role="alert">{html.escape(error)}</p>')
    return page
