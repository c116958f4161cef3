"""The README's quick start: `gwanmun demo` brings up the token service, the memo service and the gateway, and its
flow works end to end (token -> JWT at the gateway -> passport -> memo service)."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.fixtures.gateway import REPO_ROOT


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_gwanmun_demo_check_passes():
    port, token_port, memo_port = _free_ports(3)
    out = subprocess.run(
        [sys.executable, "-m", "gwanmun", "demo", "--check", "--port", str(port), "--token-port", str(token_port),
         "--memo-port", str(memo_port)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "check passed" in out.stdout
