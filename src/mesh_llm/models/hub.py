"""The few Hugging Face hub requests a download needs, each tried once with a short timeout.

Why not huggingface_hub's own download: it retries an unreachable hub for ~24 s with a dozen
warning lines, deletes a partial file when a download fails (so an interrupted 20 GB part
starts over), and checks free disk only with a warning. Here every request is one attempt
with a timeout, and a failure is one `HubError` line; the cache layout stays the one
huggingface_hub uses (hfcache.py). The endpoint is `HF_ENDPOINT` (default huggingface.co),
the token the one huggingface_hub knows (`HF_TOKEN` or `hf auth login`).
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPResponse
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from .. import __version__

SHA256_LEN = 64


def timeout_s() -> float:
    """Seconds to wait for the hub to answer or to send the next bytes."""
    try:
        return max(0.5, float(os.environ.get("MESH_LLM_HUB_TIMEOUT", "10")))
    except ValueError:
        return 10.0


class HubError(Exception):
    """A request to the hub failed; the message is one line."""


class HubUnreachable(HubError):
    """No answer at all: no network, a wrong HF_ENDPOINT, a firewall."""


@dataclass(frozen=True)
class FileMeta:
    name: str
    size: int | None
    etag: str
    commit: str
    url: str  # where the bytes are (the resolve URL, or where it redirects)
    sha256: str | None  # the hub's LFS sha256, when it gives one


def endpoint() -> str:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or str(constants.ENDPOINT)).rstrip("/")


def file_url(repo: str, revision: str, name: str) -> str:
    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(name)}"


def _headers(for_url: str) -> dict[str, str]:
    headers = {"User-Agent": f"mesh-llm/{__version__}", "Accept-Encoding": "identity"}
    if urlsplit(for_url).netloc == urlsplit(endpoint()).netloc:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except Exception:
            token = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
    return headers


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECT = urllib.request.build_opener(_NoRedirect)


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout_s():.0f} s"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return "host name not found"
    return str(getattr(err, "strerror", None) or err) or type(err).__name__


def _http_error(err: urllib.error.HTTPError, what: str) -> HubError:
    if err.code == 404:
        return HubError(f"{what}: not found on the hub (404)")
    if err.code in (401, 403):
        return HubError(f"{what}: the hub refused access ({err.code}); a gated or private "
                        "repository needs `hf auth login` or HF_TOKEN")
    return HubError(f"{what}: the hub answered {err.code} {err.reason}")


def head(repo: str, revision: str, name: str) -> FileMeta:
    """Size, ETag, commit and sha256 of one file, from a HEAD of its resolve URL."""
    url = file_url(repo, revision, name)
    for _ in range(3):  # follow same-host redirects (a renamed repository), not the CDN one
        req = urllib.request.Request(url, method="HEAD", headers=_headers(url))
        try:
            resp = _NO_REDIRECT.open(req, timeout=timeout_s())
            resp.close()
            headers, location = resp.headers, url
        except urllib.error.HTTPError as err:
            if err.code not in (301, 302, 303, 307, 308):
                raise _http_error(err, f"{repo}/{name}") from None
            headers = err.headers
            location = urljoin(url, headers.get("Location", ""))
            if (headers.get("X-Linked-Etag") is None and headers.get("ETag") is None
                    and location.startswith(endpoint())):
                url = location
                continue
        except (urllib.error.URLError, OSError) as err:
            raise HubUnreachable(f"cannot reach {endpoint()} ({_reason(err)})") from None
        break
    else:
        raise HubError(f"{repo}/{name}: too many redirects")
    etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip('"').removeprefix(
        "W/").strip('"')
    commit = headers.get("X-Repo-Commit")
    if not etag or not commit:
        raise HubError(f"{endpoint()} does not answer like a Hugging Face hub (no ETag or "
                       "X-Repo-Commit): check HF_ENDPOINT")
    size_text = headers.get("X-Linked-Size") or (
        headers.get("Content-Length") if location == url else None)
    size = int(size_text) if size_text and size_text.isdigit() else None
    sha = etag.lower() if headers.get("X-Linked-Etag") and len(etag) == SHA256_LEN else None
    return FileMeta(name, size, etag, commit, location, sha)


def list_files(repo: str, revision: str) -> list[tuple[str, int | None, str | None]]:
    """(path, size, sha256) of every file in the repository at `revision`."""
    url = (f"{endpoint()}/api/models/{repo}/tree/{quote(revision, safe='')}"
           "?recursive=true&expand=false")
    out: list[tuple[str, int | None, str | None]] = []
    while url:
        req = urllib.request.Request(url, headers=_headers(url))
        try:
            with urllib.request.urlopen(req, timeout=timeout_s()) as resp:
                items = json.load(resp)
                link = resp.headers.get("Link") or ""
        except urllib.error.HTTPError as err:
            raise _http_error(err, f"listing {repo}") from None
        except (urllib.error.URLError, OSError) as err:
            raise HubUnreachable(f"cannot reach {endpoint()} ({_reason(err)})") from None
        except ValueError:
            raise HubError(f"listing {repo}: the hub's answer is not JSON") from None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("type") == "file":
                lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else {}
                out.append((str(item.get("path")), item.get("size"), lfs.get("oid")))
        url = next((part.split(";")[0].strip(" <>") for part in link.split(",")
                    if 'rel="next"' in part), "")
    return out


@dataclass
class RangeResponse:
    status: int
    start: int  # where the bytes that follow begin in the file
    resp: HTTPResponse

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        while chunk := self.resp.read(size):
            yield chunk

    def close(self) -> None:
        self.resp.close()


def get_from(url: str, start: int) -> RangeResponse | None:
    """GET `url` from byte `start` (None: the server says there is nothing past `start`)."""
    headers = _headers(url)
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s())
    except urllib.error.HTTPError as err:
        if err.code == 416:
            return None
        raise _http_error(err, url) from None
    except (urllib.error.URLError, OSError) as err:
        raise HubUnreachable(f"cannot reach {urlsplit(url).netloc} ({_reason(err)})") from None
    return RangeResponse(resp.status, start if resp.status == 206 else 0, resp)
