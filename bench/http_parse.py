"""CPU cost of the relay's hand-written HTTP/1.1 parsing against httptools (llhttp).

Three workloads, each parsed both ways with the same checks and the same result (asserted
once before timing):

- gate: a tunnelled chat request (an `openai` client's head, a 0.6 kB JSON body) through the
  host's request gate (api/tunnel_gate.py ApiRequestGate) or an llhttp request parser doing
  the same route check, header filtering and head rewrite;
- json: a non-streamed llama-server answer (head + Content-Length body), as the relay reads
  it (api/upstream.py: head found, api/http1.py parse_head, body passed on);
- stream: a streamed answer of --tokens SSE chunks, one chunk per socket read as
  llama-server writes them (http1.parse_head, then ChunkedDecoder.feed per chunk).

Prints the median time per message over --runs runs (implementations alternate) and the
ratio httptools / hand-written (below 1: httptools is faster). Needs `pip install httptools`.

    .venv/bin/python bench/http_parse.py --runs 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

from mesh_llm.api import tunnel_gate
from mesh_llm.api.http1 import ChunkedDecoder, frame_chunk, parse_head
from mesh_llm.api.tunnel_gate import ApiRequestGate, GateRefusal

try:
    import httptools
except ImportError:
    sys.exit("needs httptools: pip install httptools")

BODY = json.dumps({"model": "SmolLM2-135M-Instruct", "stream": True, "temperature": 0,
                   "max_tokens": 128, "messages": [
                       {"role": "system", "content": "You are a helpful assistant."},
                       {"role": "user", "content": "Write a short story about a lighthouse "
                        "keeper who finds a message in a bottle, in about two hundred words, "
                        "with a twist at the end that the reader does not see coming."}]},
                  separators=(",", ":")).encode() * 2
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9337\r\n"
    b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\n"
    b"Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.4\r\n"
    b"X-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.54.4\r\n"
    b"X-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\n"
    b"X-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-mesh-0123456789abcdef\r\n"
    b"X-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
HEAD = (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: %s\r\nServer: llama.cpp\r\n"
        b"Access-Control-Allow-Origin: \r\n%s\r\n")
TOKEN = (b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" keeper"}}],'
         b'"created":1764000000,"id":"chatcmpl-3kZ5o0Qpq1X2m9S8","model":"SmolLM2-135M-Instruct",'
         b'"system_fingerprint":"b7000-1a2b3c4d","object":"chat.completion.chunk"}\n\n')
ANSWER = json.dumps({"choices": [{"finish_reason": "length", "index": 0, "message": {
    "role": "assistant", "content": "word " * 128}}], "usage": {"prompt_tokens": 40}}).encode()


def stream_pieces(tokens: int) -> list[bytes]:
    head = HEAD % (b"text/event-stream", b"Transfer-Encoding: chunked\r\n")
    chunks = [frame_chunk(TOKEN) for _ in range(tokens)]
    return [head, *chunks, frame_chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]


JSON_PIECES = [HEAD % (b"application/json", b"Content-Length: %d\r\n" % len(ANSWER)), ANSWER]


# --- hand-written: what api/upstream.py and api/tunnel_gate.py do ---
def gate_handwritten(data: bytes) -> bytes:
    gate = ApiRequestGate()
    out = gate.feed(data)
    assert gate.complete
    return out


def response_handwritten(pieces: list[bytes]) -> list[bytes]:
    """upstream.py's _read_head and _read_body, without the socket."""
    out: list[bytes] = []
    buf, decoder, it = b"", None, iter(pieces)
    for data in it:
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = parse_head(buf[:end])
            rest = buf[end + 4:]
            decoder = ChunkedDecoder() if head.chunked else None
            length = head.content_length
            break
    else:
        raise AssertionError("no head")
    for data in (rest, *it):
        if decoder is not None:
            out += decoder.feed(data)
        elif data:
            assert length is not None
            out.append(data[:length])
    return out


# --- httptools: llhttp does the framing, Python keeps the same rules ---
class LlhttpGate:
    """ApiRequestGate's rules on an llhttp request parser."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.out: list[bytes] = []
        self.seen = 0
        self.messages = 0
        self.complete = False

    def on_message_begin(self) -> None:
        self.messages += 1
        if self.messages > 1:
            raise GateRefusal("bytes after the request (one request per tunnel stream)")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.parser.get_http_version() != "1.1":
            raise GateRefusal("not an HTTP/1.1 request line")
        method = self.parser.get_method().decode()
        path = self.url.split(b"?", 1)[0].decode()
        if (method, path) not in tunnel_gate.ROUTES:
            raise GateRefusal(f"{method} {path[:80]} is not an API route")
        length: int | None = None  # llhttp has checked its digits and any repetition
        kept: list[bytes] = []
        for name, value in self.headers:
            low = name.lower()
            if low == b"transfer-encoding":
                raise GateRefusal("chunked request bodies are not accepted")
            if low == b"content-length":
                length = int(value)
            elif low not in tunnel_gate._DROPPED:
                kept.append(b"%s: %s" % (name, value))
        if method == "POST" and length is None:
            raise GateRefusal("a POST needs a Content-Length")
        if (length or 0) > tunnel_gate.MAX_BODY_BYTES:
            raise GateRefusal("request body too large")
        out = [b"%s %s HTTP/1.1" % (method.encode(), self.url), b"Host: 127.0.0.1",
               b"Connection: close", *kept]
        if method == "POST":
            out.append(b"Content-Length: %d" % (length or 0))
        self.out.append(b"\r\n".join(out) + b"\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def feed(self, data: bytes) -> bytes:
        if not self.out:  # the head is bounded as the gate bounds it
            self.seen += len(data)
        self.parser.feed_data(data)
        if not self.out and self.seen > tunnel_gate.MAX_HEAD_BYTES:
            raise GateRefusal("request head too large")
        out, self.out = b"".join(self.out), []
        return out


def gate_httptools(data: bytes) -> bytes:
    gate = LlhttpGate()
    out = gate.feed(data)
    assert gate.complete
    return out


class LlhttpResponse:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.out: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.out.append(body)


def response_httptools(pieces: list[bytes]) -> list[bytes]:
    sink = LlhttpResponse()
    parser = httptools.HttpResponseParser(sink)
    for data in pieces:
        parser.feed_data(data)
    assert parser.get_status_code() == 200
    return sink.out


def timed(fn: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=0.3, help="per run and implementation")
    args = ap.parse_args()
    stream = stream_pieces(args.tokens)
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "gate (request)": (lambda: gate_handwritten(REQUEST), lambda: gate_httptools(REQUEST)),
        "json (response)": (lambda: response_handwritten(JSON_PIECES),
                            lambda: response_httptools(JSON_PIECES)),
        f"stream ({args.tokens} chunks)": (lambda: response_handwritten(stream),
                                            lambda: response_httptools(stream)),
    }
    assert gate_handwritten(REQUEST) == gate_httptools(REQUEST)
    assert b"".join(response_handwritten(stream)) == b"".join(response_httptools(stream))
    assert response_handwritten(JSON_PIECES) == response_httptools(JSON_PIECES)
    print(f"httptools {httptools.__version__}, Python {sys.version.split()[0]}, "
          f"{args.runs} runs, medians per message")
    print(f"{'workload':<20} {'hand-written':>14} {'httptools':>14} {'ratio':>7}")
    for name, (ours, llhttp) in cases.items():
        loops = max(1, int(args.seconds / timed(ours, 50)))
        times: dict[str, list[float]] = {"ours": [], "llhttp": []}
        for run in range(args.runs):
            order = [("ours", ours), ("llhttp", llhttp)]
            for key, fn in order if run % 2 == 0 else order[::-1]:
                times[key].append(timed(fn, loops))
        a, b = statistics.median(times["ours"]), statistics.median(times["llhttp"])
        print(f"{name:<20} {a * 1e6:>11.2f} µs {b * 1e6:>11.2f} µs {b / a:>7.2f}")
        if name.startswith("stream"):
            per = args.tokens + 2
            print(f"{'  per chunk':<20} {a * 1e9 / per:>11.0f} ns {b * 1e9 / per:>11.0f} ns")


if __name__ == "__main__":
    main()
