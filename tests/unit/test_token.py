"""Invite token codec: round trips, and one precise TokenError for every kind of bad input."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import UserError
from mesh_llm.mesh.invites import (
    MAX_TOKEN_LEN,
    SECRET_LEN,
    InviteToken,
    TokenError,
    decode_token,
    encode_token,
    format_addr,
    new_secret,
    parse_addr,
)

NODE = "ab" * 32
SECRET = bytes(range(32))
DROP = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(**overrides: object) -> str:
    body: dict[str, object] = {"v": 1, "id": NODE, "addrs": ["127.0.0.1:4000"],
                               "secret": b64(SECRET)}
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not DROP}
    return b64(json.dumps(body).encode())



def test_round_trip() -> None:
    tok = InviteToken(NODE, ["127.0.0.1:4000", "[::1]:5", "node.example:65535"], SECRET)
    text = encode_token(tok)
    assert "=" not in text and "+" not in text and "/" not in text
    assert decode_token(text) == tok
    assert decode_token(f"  {text}\n") == tok  # pasted with whitespace


def test_new_secret_is_random_and_sized() -> None:
    a, b = new_secret(), new_secret()
    assert len(a) == SECRET_LEN and a != b


def test_token_error_is_a_user_error() -> None:
    # The CLI turns UserError into one line and a non-zero exit.
    assert issubclass(TokenError, UserError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "token is empty"),
        ("   ", "token is empty"),
        ("not base64!", "not valid URL-safe base64"),
        ("a", "not valid URL-safe base64"),  # impossible length
        (b64(b"\xff\xfe not utf8"), "not JSON"),
        (b64(b"hello"), "not JSON"),
        (b64(b"[1, 2]"), "not a JSON object"),
        (b64(b"[" * 3000), "not JSON"),  # nesting bomb
        ("A" * (MAX_TOKEN_LEN + 1), "too long"),
        (raw_token(v=DROP), "no version"),
        (raw_token(v="1"), "no version"),
        (raw_token(v=True), "no version"),
        (raw_token(v=3), "version 3 is not supported"),
        (raw_token(v=2), "invite has no valid capability"),
        (raw_token(id=DROP), "no node id"),
        (raw_token(id=5), "node id must be a string"),
        (raw_token(id="ab" * 31), "bad node id"),
        (raw_token(id="AB" * 32), "bad node id"),
        (raw_token(id="zz" * 32), "bad node id"),
        (raw_token(addrs=DROP), "no addresses"),
        (raw_token(addrs="127.0.0.1:1"), "list of strings"),
        (raw_token(addrs=[1]), "list of strings"),
        (raw_token(addrs=[]), "no address"),
        (raw_token(addrs=["127.0.0.1"]), "bad address"),
        (raw_token(addrs=["127.0.0.1:0"]), "port must be"),
        (raw_token(addrs=["127.0.0.1:65536"]), "port must be"),
        (raw_token(addrs=["127.0.0.1:http"]), "port must be"),
        (raw_token(addrs=["::1:80"]), "IPv6"),
        (raw_token(addrs=["[nope]:80"]), "not an IPv6 address"),
        (raw_token(addrs=["bad host:80"]), "not a host name"),
        (raw_token(addrs=["h:1"] * 17), "limit is 16"),
        (raw_token(secret=DROP), "no mesh secret"),
        (raw_token(secret=123), "secret must be a string"),
        (raw_token(secret="***"), "secret is not valid URL-safe base64"),
        (raw_token(secret=b64(b"short")), "is 5 bytes; expected 32"),
        (raw_token(secret=b64(bytes(33))), "is 33 bytes; expected 32"),
        (raw_token(secret="A" * 200), "must be 32 bytes"),
    ],
)
def test_decode_rejects_precisely(text: str, message: str) -> None:
    with pytest.raises(TokenError) as info:
        decode_token(text)
    text_of_error = str(info.value)
    assert message in text_of_error
    assert "\n" not in text_of_error and len(text_of_error) < 200


def test_decode_rejects_non_string() -> None:
    with pytest.raises(TokenError):
        decode_token(None)  # type: ignore[arg-type]


def test_encode_refuses_bad_tokens() -> None:
    with pytest.raises(TokenError, match="node id"):
        encode_token(InviteToken("xyz", ["h:1"], SECRET))
    with pytest.raises(TokenError, match="no address"):
        encode_token(InviteToken(NODE, [], SECRET))
    with pytest.raises(TokenError, match="secret"):
        encode_token(InviteToken(NODE, ["h:1"], b"x"))


def test_parse_and_format_addr() -> None:
    assert parse_addr("127.0.0.1:9") == ("127.0.0.1", 9)
    assert parse_addr("[::1]:9") == ("::1", 9)
    assert parse_addr("my-host.lan:443") == ("my-host.lan", 443)
    assert format_addr("::1", 9) == "[::1]:9"
    assert format_addr("10.0.0.1", 9) == "10.0.0.1:9"


HOSTNAME = r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,5}){0,2}"
token_strategy = st.builds(
    InviteToken,
    node_id=st.binary(min_size=32, max_size=32).map(bytes.hex),
    addrs=st.lists(
        st.tuples(
            st.one_of(
                st.ip_addresses(v=4).map(str),
                st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
                st.from_regex(HOSTNAME, fullmatch=True),
            ),
            st.integers(1, 65535),
        ).map(lambda hp: f"{hp[0]}:{hp[1]}"),
        min_size=1,
        max_size=16,
    ),
    secret=st.binary(min_size=32, max_size=32),
)


@settings(deadline=None)
@given(token_strategy)
def test_round_trip_property(tok: InviteToken) -> None:
    assert decode_token(encode_token(tok)) == tok


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=600), st.binary(max_size=600).map(b64)))
def test_decode_raises_only_token_error(text: str) -> None:
    with contextlib.suppress(TokenError):
        decode_token(text)


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["v", "id", "addrs", "secret", "x"]), children,
                      max_size=5),
    max_leaves=20,
))
def test_decode_any_json_raises_only_token_error(value: object) -> None:
    try:
        text = b64(json.dumps(value).encode())
    except ValueError:
        return
    with contextlib.suppress(TokenError):
        decode_token(text)
