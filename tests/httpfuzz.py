"""Malformed HTTP/1.1 requests for a live node, and what counts as a correct answer to one.

Shared by tests/integration/test_http_edges.py (a few hundred cases) and
bench/http_fuzz.py (tens of thousands). A correct answer is a closed connection, a success,
or a JSON error body of the contract with a status under 500 (503 "unavailable" allowed:
no model yet). The node's log must show no traceback for any of it.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from dataclasses import dataclass

from hypothesis import strategies as st

API_PATHS = ["/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/"]
CONSOLE_PATHS = ["/", "/api/status", "/api/events", "/api/chat", "/api/session",
                 "/static/app.js", "/static/../README.md", "/login"]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
           "PRI", "get", "G ET", "GET\x00", "\x16\x03", "FOO", "GET" * 40]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/0.9", "http/1.1",
            "HTTP/1.1 extra", "HTTP/1.", "", "HTTP/11"]
FIRST_WAIT_S = 0.5  # no answer by then: the server waits for more bytes, so we end the send
READ_TIMEOUT_S = 10.0
SILENCE_S = 0.2


@dataclass(frozen=True)
class Case:
    """One request as bytes, and the method the first answer belongs to (HEAD: no body)."""

    raw: bytes
    method: str

    def __repr__(self) -> str:
        return f"Case({self.raw[:300]!r}{'...' if len(self.raw) > 300 else ''})"


def _body() -> st.SearchStrategy[bytes]:
    depth = st.integers(1, 30_000)
    return st.one_of(
        depth.map(lambda n: b"[" * n),
        depth.map(lambda n: b"[" * n + b"]" * n),
        depth.map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.integers(1, 3000).map(lambda n: b'{"x": ' + b"[" * n + b"]" * n + b"}"),
        st.binary(max_size=512),
        st.sampled_from([b"", b"{", b"null", b"[1,2]", b'"x"', b"NaN", b'{"a": Infinity}',
                         b'{"a": 1}', b"\xef\xbb\xbf{}", b'{"messages": "\\ud800"}',
                         '{"a": 1}'.encode("utf-16"), b"\x00" * 64, b'{"a":1}{"b":2}']),
    )


def _header() -> st.SearchStrategy[bytes]:
    token = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
                    min_size=1, max_size=12)
    return st.one_of(
        st.tuples(token, st.text(max_size=40)).map(
            lambda kv: f"{kv[0]}: {kv[1]}".encode("utf-8", "surrogatepass")),
        st.sampled_from([
            b"Host: attacker.example", b"Host: ", b"Host: [::1", b"Host: 127.0.0.1:99999",
            b"Host: localhost\r\nHost: attacker.example", b"Origin: http://attacker.example",
            b"Origin: null", b"Origin: http://localhost", b"Content-Length: -1",
            b"Content-Length: 99999999999999999999", b"Content-Length: 1, 2",
            b"Content-Length: 3\r\nContent-Length: 4", b"Transfer-Encoding: chunked, gzip",
            b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked\r\nContent-Length: 3",
            b"Expect: 100-continue", b"Expect: 42-fail", b"Connection: upgrade\r\nUpgrade: h2c",
            b"Content-Encoding: gzip", b"Content-Type: multipart/form-data; boundary=x",
            b"Accept: text/html", b"Authorization: Bearer " + b"k" * 100, b" folded: value",
            b"\tfolded", b"NoColon", b": empty-name", b"X-Nul: a\x00b", b"X\x7f: del",
            b"Cookie: mesh_llm_session=" + b"0" * 64, b"X-Big: " + b"b" * 9000,
        ]),
        st.integers(129, 300).map(lambda n: b"\r\n".join(b"X-%d: y" % i for i in range(n))),
    )


def _chunked(body: bytes) -> st.SearchStrategy[bytes]:
    size = b"%x" % len(body)
    return st.sampled_from([
        size + b"\r\n" + body + b"\r\n0\r\n\r\n",
        b"zz\r\n" + body,
        size + b"\r\n" + body + b"0\r\n\r\n",
        b"ffffffffffffffffff\r\n" + body,
        b"-1\r\n\r\n",
        size + b";ext=" + b"e" * 5000 + b"\r\n" + body + b"\r\n0\r\n\r\n",
        size + b"\r\n" + body + b"\r\n0\r\nTrailer: x\r\n\r\n",
    ])


@st.composite
def requests(draw: st.DrawFn, paths: list[str], host: str) -> Case:
    """One malformed (sometimes well-formed) request to a server at `host`."""
    kind = draw(st.sampled_from(["framed", "framed", "framed", "line", "garbage"]))
    if kind == "garbage":
        raw = draw(st.one_of(st.binary(min_size=1, max_size=2048), st.sampled_from([
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 60,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\r\n\r\n", b"\n\n\n\n", b" " * 9000,
        ])))
        return Case(raw, "?")
    method = draw(st.sampled_from(["GET", "POST", "HEAD"]) if draw(st.integers(0, 9)) < 7
                  else st.sampled_from(METHODS))
    target = draw(st.one_of(
        st.sampled_from(paths),
        st.sampled_from(paths).map(lambda p: p + "?" + "q" * 20),
        st.sampled_from(["*", "http://attacker.example/health", "//health", "/%ff%fe",
                         "/v1/../v1/models", "/health#frag", "/" + "a" * 9000, "health",
                         "/\x00", "/ space", "/%00", "/static/%2e%2e/%2e%2e/etc/passwd"]),
        st.text(max_size=30).map(lambda t: "/" + t),
    ))
    version = "HTTP/1.1" if draw(st.integers(0, 9)) < 7 else draw(st.sampled_from(VERSIONS))
    line = f"{method} {target} {version}".encode("utf-8", "surrogatepass")
    if kind == "line":  # the request line alone, maybe with a bare LF
        end = draw(st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b"\r\r\r\r"]))
        return Case(line + end, method)
    headers = [] if draw(st.booleans()) and draw(st.booleans()) else [f"Host: {host}".encode()]
    if draw(st.booleans()):
        headers += draw(st.lists(_header(), max_size=3))
    body = draw(_body()) if method != "HEAD" or draw(st.booleans()) else b""
    framing = draw(st.sampled_from(["length", "length", "chunked", "wrong-length", "none"]))
    payload = body
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "wrong-length":
        headers.append(b"Content-Length: %d" % max(0, len(body) + draw(st.integers(-50, 50))))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        payload = draw(_chunked(body))
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    head = line + eol + eol.join(headers) + eol + eol
    return Case(head + payload, method.upper())


@dataclass
class Reply:
    closed_without_answer: bool
    responses: list[tuple[int, dict[str, str], bytes | None]]  # status, headers, body
    waited: bool  # the server was still waiting for bytes after FIRST_WAIT_S


def exchange(host: str, port: int, case: Case, source: str | None = None) -> Reply:
    """Send `case` on a fresh connection; read what comes back until the server closes,
    goes quiet after complete answers, or (if it says nothing) we end our side."""
    sock = socket.create_connection((host, port), timeout=READ_TIMEOUT_S,
                                    source_address=(source, 0) if source else None)
    data = b""
    waited = False
    try:
        with contextlib.suppress(OSError):  # it may answer and close before reading all
            sock.sendall(case.raw)
        sock.settimeout(FIRST_WAIT_S)
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not data and not waited:
                    waited = True  # it wants more than we sent: stop sending
                    sock.shutdown(socket.SHUT_WR)
                    sock.settimeout(READ_TIMEOUT_S)
                    continue
                if _complete(data, case.method):
                    break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            sock.settimeout(SILENCE_S)
    finally:
        sock.close()
    responses = parse_responses(data, case.method)
    return Reply(not data, responses, waited)


def _complete(data: bytes, method: str) -> bool:
    try:
        parse_responses(data, method, strict=True)
        return True
    except ValueError:
        return False


def parse_responses(data: bytes, method: str, strict: bool = False
                    ) -> list[tuple[int, dict[str, str], bytes | None]]:
    """Every answer in `data`; a body is None where it cannot be delimited (a stream)."""
    out: list[tuple[int, dict[str, str], bytes | None]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if strict:
                raise ValueError("incomplete head")
            out.append((-1, {}, data[pos:pos + 200]))
            break
        lines = data[pos:end].decode("latin-1").split("\r\n")
        match = re.fullmatch(r"HTTP/\d\.\d (\d{3})(?: .*)?", lines[0])
        status = int(match[1]) if match else -1
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        pos = end + 4
        if not out and method == "HEAD" and (pos == len(data) or data.startswith(b"HTTP/", pos)):
            out.append((status, headers, b""))  # the answer to a HEAD has no body
            continue
        if "content-length" in headers:
            length = int(headers["content-length"])
            if pos + length > len(data) and strict:
                raise ValueError("incomplete body")
            out.append((status, headers, data[pos:pos + length]))
            pos += length
        else:
            out.append((status, headers, None))  # chunked or to the close: a stream
            break
    return out


def problems(reply: Reply) -> list[str]:
    """What is wrong with the answers, by the contract (empty: all fine)."""
    found = []
    for status, headers, body in reply.responses:
        if status < 0:
            found.append(f"not an HTTP answer: {body!r}")
            continue
        if status < 400:
            continue
        if not headers.get("content-type", "").startswith("application/json"):
            found.append(f"{status} with Content-Type {headers.get('content-type')!r}")
            continue
        if body is None:
            found.append(f"{status} without a delimited body")
            continue
        if body == b"" and "content-length" in headers:
            continue  # the answer to a HEAD
        try:
            error = json.loads(body)["error"]
            assert isinstance(error["message"], str) and isinstance(error["type"], str)
            assert error.get("code", status) == status
        except (ValueError, KeyError, TypeError, AssertionError):
            found.append(f"{status} body is not the contract's error: {body[:200]!r}")
            continue
        if status >= 500 and not (status == 503 and error["type"] == "unavailable"):
            found.append(f"{status}: {error['message'][:200]}")
    return found


def log_problems(output: str) -> list[str]:
    """Lines of the node's log that show an unhandled error."""
    return [line for line in output.splitlines()
            if "Traceback" in line or "Error handling request" in line]
