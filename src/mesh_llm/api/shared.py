"""Models an existing OpenAI-compatible server serves (Ollama, LM Studio, vLLM, a
llama-server), shared with the mesh by the node that can reach it (`--share URL`).

Pure parts, no I/O: the URL check (loopback only unless `--share-remote`: a node must not
become a proxy into its LAN by accident), the server's model list read as untrusted input,
the request the sharing node sends on (its key added there and only there), and the merge
of shared models with the mesh's GGUF models for `/v1/models` and name matching.

A shared model's group key is `shared:NAME`; it is never a fingerprint (the mesh does
not hold its weights) and never enters an election.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .http1 import request_bytes
from .name_match import ServedModel, find_model

SHARED_KEY_PREFIX = "shared:"
SHARED_SUFFIX = "@shared"  # names the shared entry where a GGUF model takes the plain name
MAX_SHARED_MODELS = 64  # models read from one server (the announcement's bound too)
MAX_SHARED_NAME = 256
MAX_LIST_BYTES = 1024 * 1024  # a model list larger than this is refused
MAX_URL_LEN = 2048
LOOPBACK_HOSTS = ("localhost",)
# Printable ASCII, no surrounding blanks: safe in a header, a log line and the console.
_NAME = re.compile(rf"[!-~](?:[ -~]{{0,{MAX_SHARED_NAME - 2}}}[!-~])?")


class ShareUrlError(ValueError):
    """A --share URL this node will not use; the message is the one line the user sees."""


@dataclass(frozen=True)
class ShareTarget:
    """One --share: the server's base URL (what OpenAI clients call base_url) and its key."""

    url: str  # as given, without a trailing slash
    scheme: str  # "http" | "https"
    host: str  # without brackets
    port: int
    base_path: str  # "" or "/v1", "/openai/v1" ...: prefixed to each route after /v1
    key: str | None = field(default=None, repr=False)  # sent to the server, never shown

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def models_url(self) -> str:
        return f"{self.url}/models"

    def path_for(self, route: str) -> str:
        """The server's path for one of the mesh's routes: `/v1/chat/completions` on a
        base URL `http://h:p/v1` is `/v1/chat/completions`, on `http://h:p` it is
        `/chat/completions` (the base URL is what an OpenAI client would be given)."""
        tail = route[len("/v1"):] if route.startswith("/v1/") else route
        return f"{self.base_path}{tail}"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def is_loopback_host(host: str) -> bool:
    if host.casefold() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_share_url(url: str, key: str | None = None, *,
                    allow_remote: bool = False) -> ShareTarget:
    """A --share URL checked: http(s), a host, no credentials or query in it, and a
    loopback host unless `allow_remote`. ShareUrlError (one line) if not."""
    shown = url if len(url) <= 80 else url[:77] + "..."
    if len(url) > MAX_URL_LEN or not url.isprintable() or " " in url:
        raise ShareUrlError(f"--share {shown!r}: not a URL")
    try:
        parts = urlsplit(url.rstrip("/"))
        port = parts.port
    except ValueError as err:
        raise ShareUrlError(f"--share {shown!r}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ShareUrlError(f"--share {shown!r}: give the server's base URL, e.g. "
                            "http://127.0.0.1:11434/v1")
    if parts.username is not None or parts.password is not None:
        raise ShareUrlError(f"--share {parts.scheme}://{parts.hostname}...: no credentials in "
                            "the URL (give the server's key with --share-key KEY)")
    if parts.query or parts.fragment:
        raise ShareUrlError(f"--share {shown!r}: a base URL has no query or fragment")
    host = parts.hostname
    if not allow_remote and not is_loopback_host(host):
        raise ShareUrlError(f"--share {shown!r}: only a server on this machine (127.0.0.1, "
                            "localhost, [::1]) may be shared unless --share-remote")
    default = 443 if parts.scheme == "https" else 80
    return ShareTarget(url=url.rstrip("/"), scheme=parts.scheme, host=host,
                       port=port if port is not None else default,
                       base_path=parts.path.rstrip("/"), key=key or None)


def valid_name(name: object) -> bool:
    """A model name the mesh will carry: printable ASCII, at most MAX_SHARED_NAME
    characters, not ending in SHARED_SUFFIX."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None \
        and not name.casefold().endswith(SHARED_SUFFIX)


def parse_model_list(body: bytes) -> list[str]:
    """The model ids of a `GET /models` answer: OpenAI's `{"data": [{"id": ...}]}` (what
    Ollama's /v1, LM Studio, vLLM and llama-server answer), or Ollama's own
    `{"models": [{"name": ...}]}`. Untrusted: at most MAX_SHARED_MODELS names, each
    `valid_name` (others are skipped), duplicates dropped. ValueError if not a list."""
    if len(body) > MAX_LIST_BYTES:
        raise ValueError(f"model list larger than {MAX_LIST_BYTES // 1024} KiB")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("model list is not JSON") from None
    entries = doc.get("data", doc.get("models")) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError('model list has no "data" list')
    names: list[str] = []
    for entry in entries:
        name = (entry.get("id", entry.get("name")) if isinstance(entry, dict) else None)
        if valid_name(name) and name not in names:
            names.append(name)
            if len(names) == MAX_SHARED_MODELS:
                break
    return names


def rewrite_model(body: bytes, name: str) -> bytes:
    """The request's JSON body with `model` set to the server's own name for the model
    (a request may have named it `NAME@shared`, or any name in a one-model mesh).
    ValueError if the body is not a JSON object."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("the request body is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("the request body is not a JSON object")
    doc["model"] = name
    return json.dumps(doc).encode()


def server_request(target: ShareTarget, route: str, name: str, body: bytes,
                   accept: str = "*/*") -> bytes:
    """The whole request the sharing node sends its server for one relayed request: a
    fresh head (nothing of the caller's head but its Accept), the server's key, the
    body with the server's model name."""
    headers = {"Content-Type": "application/json", "Accept": _header_value(accept),
               **target.auth_headers()}
    return request_bytes("POST", target.authority, target.path_for(route), headers,
                         rewrite_model(body, name))


def _header_value(value: str) -> str:
    return value if len(value) <= 256 and value.isascii() and value.isprintable() else "*/*"


def shared_key(name: str) -> str:
    return SHARED_KEY_PREFIX + name


def merge_served(gguf: Sequence[ServedModel], shared: Mapping[str, Sequence[str]],
                 me: str) -> list[ServedModel]:
    """The API's models: the mesh's GGUF models, then one entry per shared model name
    (`shared` maps each name to the nodes that share it). A shared model is reached by
    its exact name, or by NAME@shared; where a GGUF model of the mesh answers to the
    name, that one keeps it (the GGUF is the default for its name) and the shared entry
    is listed as NAME@shared. Requests go to this node when it shares the model, else to
    the first sharing node by id."""
    out = list(gguf)
    for name in sorted(shared):
        nodes = tuple(sorted(set(shared[name])))
        if not nodes:
            continue
        tagged = name + SHARED_SUFFIX
        taken = find_model(name, gguf) is not None
        shown, alias = (tagged, name) if taken else (name, tagged)
        out.append(ServedModel(shown, shared_key(name), (alias,), ready=True, mode="shared",
                               host=me if me in nodes else nodes[0], nodes=nodes,
                               kind="shared"))
    return out


def shared_name(model: ServedModel) -> str:
    """The server's own name of a shared model (its key without the prefix)."""
    return model.key[len(SHARED_KEY_PREFIX):]
