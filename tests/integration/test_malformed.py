"""Malformed or hostile requests get a 4xx (or the connection closed), never reach the upstream in a form the
gateway did not understand, and never take the gateway down."""

from __future__ import annotations

import pytest

from tests.fixtures.gateway import single_service
from tests.fixtures.rawhttp import PeerClosed, RawConnection


@pytest.fixture
def gw(shared_gateway, scripted):
    return shared_gateway(single_service(scripted.url, name="scripted", route_name="all"))


def _exchange(gw, data: bytes, timeout: float = 5.0):
    """Send raw bytes; return (first response or None if closed without one, whether the connection then closed)."""
    with RawConnection(gw.host, gw.port, timeout=timeout) as c:
        c.send(data)
        try:
            r = c.read_response()
        except (PeerClosed, ConnectionResetError):
            return None, True
        except TimeoutError:
            raise AssertionError(f"no response and no close within {timeout}s; received {bytes(c.buf)[:300]!r}")
        try:
            closed = c.peer_closed(2)
        except AssertionError:
            closed = False
        return r, closed


def _assert_rejected(gw, data: bytes, statuses=(400,)):
    r, closed = _exchange(gw, data)
    if r is not None:
        assert r.status in statuses, f"expected {statuses}, got {r.status}: {r.body[:200]!r}"
        assert closed, "connection left open after a malformed request"
    # the gateway is still alive and serving
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", "/echo?alive=1")
        assert c.read_response().status == 200
    return r


@pytest.mark.parametrize("data", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello on the plain port
], ids=["garbage", "no-target", "no-colon", "space-in-name", "cl-not-number", "cl-negative", "cl-conflict",
        "version", "tls"])
def test_malformed_rejected(gw, data):
    _assert_rejected(gw, data, statuses=(400, 505))


def test_bad_chunk_size_rejected(gw, scripted, token):
    data = (f"POST /sink?t={token} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            "zz\r\nhello\r\n0\r\n\r\n").encode()
    r, closed = _exchange(gw, data)
    assert r is None or (r.status in (400, 502) and closed), (r and r.status, closed)
    assert not [x for x in scripted.find(token) if x.body_len], "a body the gateway could not parse was forwarded"


def test_content_length_with_transfer_encoding_no_smuggling(gw, scripted, token):
    """CL and TE together (RFC 9112 §6.1): reject, or treat as chunked and close after. The bytes after the chunked
    body must never be taken as a second request the client did not frame."""
    smuggled = f"GET /echo?t={token}&smuggled=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    body = "0\r\n\r\n" + smuggled
    data = (f"POST /echo?t={token}&first=1 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{body}").encode()
    r, closed = _exchange(gw, data)
    if r is not None:
        assert r.status == 400 or closed, "connection kept open after a CL+TE request"
    assert not [x for x in scripted.find(token) if x.query.get("smuggled")], "smuggled request reached upstream"


@pytest.mark.parametrize("te", ["gzip", "chunked, gzip", "identity", "chunkedx"])
def test_unsupported_transfer_encoding(gw, token, te):
    data = f"POST /sink?t={token} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
    _assert_rejected(gw, data, statuses=(400, 501))


def test_oversized_header_rejected(gw):
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (128 * 1024) + b"\r\n\r\n"
    _assert_rejected(gw, data, statuses=(431,))


def test_too_many_headers_rejected(gw):
    data = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n"
    _assert_rejected(gw, data, statuses=(431,))


def test_oversized_request_line_rejected(gw):
    data = b"GET /" + b"a" * (64 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    _assert_rejected(gw, data, statuses=(414,))


def test_client_disconnect_mid_request_harmless(gw, token):
    with RawConnection(gw.host, gw.port) as c:
        c.send(f"POST /sink?t={token} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 500)
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/echo?t={token}&after=1")
        assert c.read_response().status == 200


def test_client_disconnect_while_upstream_hangs(gw, scripted, token):
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/hang?t={token}&max=30")
        scripted.wait_request(token)
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/echo?t={token}&after=1")
        assert c.read_response().status == 200


def _internal_errors(gw) -> list[str]:
    return [ln for ln in gw.stderr_text().splitlines() if "Traceback" in ln or "Fatal error" in ln]


@pytest.mark.parametrize("te", ["gzip", "chunkedx"])
def test_bad_transfer_encoding_with_pooled_upstream(gateway, scripted, token, te):
    """With a pooled upstream connection ready (the fast path), a request the parser rejects after its head must
    still get a clean 400 and a closed connection, without an internal error, and must not keep the gateway from
    exiting on SIGTERM."""
    import signal
    import subprocess

    gw = gateway(single_service(scripted.url, name="scripted", route_name="all"))
    with RawConnection(gw.host, gw.port) as c:  # warm the pool
        c.request("GET", f"/echo?t={token}")
        assert c.read_response().status == 200
    for i in range(5):
        data = (f"POST /sink?t={token}&i={i} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n"
                "5\r\nhello\r\n0\r\n\r\n").encode()
        r, closed = _exchange(gw, data)
        assert r is not None and r.status == 400 and closed, (i, r and r.status, closed)
    assert not _internal_errors(gw), _internal_errors(gw)[:2]
    gw.proc.send_signal(signal.SIGTERM)
    try:
        gw.proc.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("gateway did not exit within 5 s of SIGTERM")


def test_client_abort_releases_upstream(gateway, scripted, token):
    """When the client goes away mid-request, the gateway stops waiting for the upstream and closes that upstream
    connection (it cannot be reused with a response still pending), rather than holding it until a timeout."""
    gw = gateway(single_service(scripted.url, name="scripted", route_name="all", read_timeout=60000))
    with RawConnection(gw.host, gw.port) as c:
        c.request("GET", f"/hang?t={token}&max=60")
        rec = scripted.request_for(token)
    scripted.wait_closed(rec.conn_id, timeout=5)
