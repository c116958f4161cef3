"""The floor: the smallest keep-alive reverse proxy on uvloop + httptools (no routing, no headers, no log).

    python bench/floor_proxy.py --upstream 127.0.0.1:18081 --listen 127.0.0.1:18092

Not part of gwanmun. It answers "how fast can any Python proxy on this stack be here?": measured 2026-11-22 it costs
about the same CPU per request as nginx (14.6 µs), so the event loop and parser are not what separates gwanmun
from nginx. Only for GET requests with Content-Length responses; one upstream connection per client connection.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.out: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.down.waiting:
            transport.write(self.down.waiting)
            self.down.waiting = b""

    def data_received(self, data: bytes) -> None:
        self.out = []
        self.parser.feed_data(data)
        self.down.transport.write(b"".join(self.out))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        kept = b"".join(b"%b: %b\r\n" % (n, v) for n, v in self.headers if n.lower() != b"connection")
        self.out.append(b"HTTP/1.1 200 OK\r\n" + kept + b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.out.append(body)


class Downstream(asyncio.Protocol):
    upstream_addr: tuple[str, int] = ("127.0.0.1", 18081)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.waiting = b""
        self.url = b""
        self.up = Upstream(self)
        loop = asyncio.get_running_loop()
        loop.create_task(loop.create_connection(lambda: self.up, *self.upstream_addr))

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        host = b"%s:%d" % (self.upstream_addr[0].encode(), self.upstream_addr[1])
        request = b"GET %b HTTP/1.1\r\nHost: %b\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n" % (self.url, host)
        up = self.up
        up.headers = []
        up.parser = httptools.HttpResponseParser(up)
        if up.transport is None:
            self.waiting = request
        else:
            up.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)


async def serve(listen: tuple[str, int]) -> None:
    server = await asyncio.get_running_loop().create_server(Downstream, *listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", default="127.0.0.1:18081")
    p.add_argument("--listen", default="127.0.0.1:18092")
    a = p.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    Downstream.upstream_addr = (host, int(port))
    lhost, lport = a.listen.rsplit(":", 1)
    uvloop.install()
    asyncio.run(serve((lhost, int(lport))))


if __name__ == "__main__":
    main()
