"""Quick-start demo: three tiny upstream services and gwanmun in front of them.

    python examples/quickstart/demo.py

Starts a "users" service on :9001 and two "orders" instances on :9002 and :9003 (plain stdlib HTTP servers that
echo what they receive), then the gateway on :8000 with gateway.yml, and prints curl commands to try. Ctrl-C stops
everything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent


def service(name: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # one response, one segment: no 40 ms delayed-ACK stalls

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            out = json.dumps(
                {
                    "service": name,
                    "instance": f"127.0.0.1:{port}",
                    "method": self.command,
                    "path": self.path,  # what the gateway sent upstream
                    "headers": dict(self.headers),
                    "body": body.decode("utf-8", "replace"),
                },
                indent=2,
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

        def log_message(self, *args) -> None:  # keep the demo's output to the gateway's access log
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name=name).start()
    return server


def wait_for_port(port: int, timeout: float = 10.0) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def main() -> int:
    servers = [service("users", 9001), service("orders", 9002), service("orders", 9003)]
    gw = subprocess.Popen([sys.executable, "-m", "gwanmun", "run", "--config", str(HERE / "gateway.yml")])
    try:
        if not wait_for_port(8000):
            print("the gateway did not start; see the errors above", file=sys.stderr)
            return 1
        print(
            """
gwanmun is listening on http://127.0.0.1:8000 (access log below). Try:

  curl -i http://127.0.0.1:8000/users/42          # prefix route, strip_path: upstream sees /v1/42
  curl -i http://127.0.0.1:8000/people/7          # regex route: upstream sees /v1/people/7
  curl -i http://127.0.0.1:8000/orders            # balanced 2:1 over two instances (see "instance")
  curl -i -X POST -d '{"item": 1}' http://127.0.0.1:8000/orders
  curl -i http://127.0.0.1:8000/nothing-here      # no route: 404 with a JSON body and a request id
  gwanmun validate examples/quickstart/gateway.yml

Ctrl-C to stop.
""",
            flush=True,
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM}) if hasattr(signal, "sigwait") else gw.wait()
    except KeyboardInterrupt:
        pass
    finally:
        gw.terminate()
        try:
            gw.wait(5)
        except subprocess.TimeoutExpired:
            gw.kill()
        for s in servers:
            s.shutdown()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
