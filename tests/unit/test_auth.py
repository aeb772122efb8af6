"""Authentication decisions (pure), and the two I/O shells over an in-memory pipe."""

from __future__ import annotations

import asyncio

import pytest

from mesh_llm.mesh.auth import (
    AuthError,
    AuthResult,
    Proof,
    build_transcript,
    check_proof,
    hello_message,
    make_proof,
    new_nonce,
    parse_hello,
    parse_proof,
    proof_message,
    run_acceptor,
    run_dialer,
    transcript_digest,
)
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.protocol import encode_frame

DIALER = Identity.generate()
ACCEPTOR = Identity.generate()
SECRET = b"s" * 32
FP = b"f" * 32


def transcript(**kw: bytes | str) -> bytes:
    args: dict = {
        "dialer_id": DIALER.node_id,
        "acceptor_id": ACCEPTOR.node_id,
        "dialer_nonce": b"a" * 32,
        "acceptor_nonce": b"b" * 32,
        "cert_fingerprint": FP,
    }
    args.update(kw)
    return build_transcript(**args)


def test_valid_proofs_check() -> None:
    t = transcript()
    check_proof(ACCEPTOR.node_id, SECRET, "acceptor",
                t, make_proof(ACCEPTOR, SECRET, "acceptor", t))
    check_proof(DIALER.node_id, SECRET, "dialer", t, make_proof(DIALER, SECRET, "dialer", t))


def test_transcript_binds_every_field() -> None:
    base = transcript()
    variants = [
        transcript(dialer_id=ACCEPTOR.node_id, acceptor_id=DIALER.node_id),
        transcript(dialer_nonce=b"c" * 32),
        transcript(acceptor_nonce=b"c" * 32),
        transcript(cert_fingerprint=b"g" * 32),
    ]
    proof = make_proof(DIALER, SECRET, "dialer", base)
    for other in variants:
        assert other != base
        with pytest.raises(AuthError):
            check_proof(DIALER.node_id, SECRET, "dialer", other, proof)


def test_wrong_secret_is_named() -> None:
    t = transcript()
    proof = make_proof(DIALER, b"x" * 32, "dialer", t)
    with pytest.raises(AuthError, match="secret"):
        check_proof(DIALER.node_id, SECRET, "dialer", t, proof)


def test_wrong_key_is_named() -> None:
    t = transcript()
    proof = make_proof(Identity.generate(), SECRET, "dialer", t)
    with pytest.raises(AuthError, match="prove its key"):
        check_proof(DIALER.node_id, SECRET, "dialer", t, proof)


def test_roles_do_not_reflect() -> None:
    # A dialer's proof replayed as an acceptor's (or back) must fail.
    t = transcript()
    proof = make_proof(DIALER, SECRET, "dialer", t)
    with pytest.raises(AuthError):
        check_proof(DIALER.node_id, SECRET, "acceptor", t, proof)
    forged = Proof(sig=make_proof(DIALER, SECRET, "acceptor", t).sig, mac=proof.mac)
    with pytest.raises(AuthError, match="secret"):
        check_proof(DIALER.node_id, SECRET, "acceptor", t, forged)


def test_transcript_validates_inputs() -> None:
    with pytest.raises(AuthError):
        transcript(dialer_id="nope")
    with pytest.raises(AuthError):
        transcript(dialer_nonce=b"short")
    with pytest.raises(AuthError):
        transcript(cert_fingerprint=b"")
    assert len(transcript_digest(transcript())) == 32


def test_nonces_are_fresh() -> None:
    assert new_nonce() != new_nonce() and len(new_nonce()) == 32


def test_parse_hello() -> None:
    nonce = new_nonce()
    hello = parse_hello(hello_message(DIALER.node_id, nonce), ACCEPTOR.node_id)
    assert (hello.node_id, hello.nonce) == (DIALER.node_id, nonce)
    with pytest.raises(AuthError, match="itself"):
        parse_hello(hello_message(DIALER.node_id, nonce), DIALER.node_id)
    with pytest.raises(AuthError, match="before saying hello"):
        parse_hello(None, ACCEPTOR.node_id)
    with pytest.raises(AuthError, match="expected hello"):
        parse_hello({"t": "proof"}, ACCEPTOR.node_id)
    with pytest.raises(AuthError, match="refusal: go away"):
        parse_hello({"t": "error", "reason": "go away"}, ACCEPTOR.node_id)
    with pytest.raises(AuthError, match="node id"):
        parse_hello({"t": "hello", "id": "x", "nonce": nonce.hex()}, ACCEPTOR.node_id)
    with pytest.raises(AuthError, match="nonce"):
        parse_hello({"t": "hello", "id": DIALER.node_id, "nonce": "00"}, ACCEPTOR.node_id)
    with pytest.raises(AuthError, match="not hex"):
        parse_hello({"t": "hello", "id": DIALER.node_id, "nonce": "zz" * 32},
                    ACCEPTOR.node_id)


def test_parse_proof() -> None:
    proof = make_proof(DIALER, SECRET, "dialer", transcript())
    assert parse_proof(proof_message(proof)) == proof
    with pytest.raises(AuthError, match="sig"):
        parse_proof({"t": "proof", "sig": 5, "mac": proof.mac.hex()})
    with pytest.raises(AuthError, match="mac"):
        parse_proof({"t": "proof", "sig": proof.sig.hex(), "mac": "ab"})
    with pytest.raises(AuthError, match="before its proof"):
        parse_proof(None)


# ---------------------------------------------------------------------------- I/O shells


class Pipe:
    """One end of an in-memory duplex byte pipe (just what the frame helpers use)."""

    def __init__(self) -> None:
        self.inbox: asyncio.StreamReader = asyncio.StreamReader()
        self.peer: Pipe | None = None

    async def readexactly(self, n: int) -> bytes:
        return await self.inbox.readexactly(n)

    async def write(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.inbox.feed_data(data)

    def close(self) -> None:
        assert self.peer is not None
        self.peer.inbox.feed_eof()


def pipe_pair() -> tuple[Pipe, Pipe]:
    a, b = Pipe(), Pipe()
    a.peer, b.peer = b, a
    return a, b


async def test_handshake_succeeds_and_agrees() -> None:
    d, a = pipe_pair()
    rd, ra = await asyncio.gather(
        run_dialer(d, DIALER, SECRET, FP, expected_peer=ACCEPTOR.node_id),
        run_acceptor(a, ACCEPTOR, SECRET, FP),
    )
    assert rd.peer_id == ACCEPTOR.node_id and ra.peer_id == DIALER.node_id
    assert rd.dialer_id == ra.dialer_id == DIALER.node_id
    assert rd.transcript_digest == ra.transcript_digest


async def closing_acceptor(pipe: Pipe, fingerprint: bytes = FP) -> AuthResult:
    """The acceptor side, closing its end when it fails so the dialer is not left waiting."""
    try:
        return await run_acceptor(pipe, ACCEPTOR, SECRET, fingerprint, timeout=1)
    finally:
        pipe.close()


async def test_secret_mismatch_fails_both_sides() -> None:
    d, a = pipe_pair()

    results = await asyncio.gather(
        run_dialer(d, DIALER, b"w" * 32, FP, timeout=1), closing_acceptor(a),
        return_exceptions=True
    )
    assert isinstance(results[0], AuthError) and "secret" in str(results[0])
    assert isinstance(results[1], AuthError)


async def test_different_cert_fingerprints_fail() -> None:
    # What a relay splicing two TLS sessions would produce.
    d, a = pipe_pair()

    results = await asyncio.gather(
        run_dialer(d, DIALER, SECRET, FP, timeout=1), closing_acceptor(a, b"m" * 32),
        return_exceptions=True
    )
    assert all(isinstance(r, AuthError) for r in results)


async def test_unexpected_peer_is_refused() -> None:
    d, a = pipe_pair()

    results = await asyncio.gather(
        run_dialer(d, DIALER, SECRET, FP, expected_peer="ab" * 32, timeout=1),
        closing_acceptor(a),
        return_exceptions=True,
    )
    assert isinstance(results[0], AuthError) and "expected node" in str(results[0])


async def test_acceptor_times_out_on_silence() -> None:
    _, a = pipe_pair()
    with pytest.raises(AuthError, match=r"within 0\.05 s"):
        await run_acceptor(a, ACCEPTOR, SECRET, FP, timeout=0.05)


async def test_acceptor_rejects_garbage_and_oversize() -> None:
    d, a = pipe_pair()
    await d.write(b"\xff\xff\xff\xff")  # 4 GiB declared
    with pytest.raises(AuthError, match="exceeds"):
        await run_acceptor(a, ACCEPTOR, SECRET, FP, timeout=1)
    d, a = pipe_pair()
    await d.write(encode_frame({"t": "proof"}))
    with pytest.raises(AuthError, match="expected hello"):
        await run_acceptor(a, ACCEPTOR, SECRET, FP, timeout=1)
    d, a = pipe_pair()
    d.close()
    with pytest.raises(AuthError, match="before saying hello"):
        await run_acceptor(a, ACCEPTOR, SECRET, FP, timeout=1)
