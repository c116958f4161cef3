"""Route-level semantics the proxy applies after matching."""

from __future__ import annotations



def test_https_only_route_over_http_is_426(gateway, httpbin):
    gw = gateway(
        {
            "_format_version": "3.0",
            "services": [
                {
                    "name": "bin",
                    "url": httpbin.url,
                    "routes": [
                        {"name": "secure", "paths": ["/secure"], "protocols": ["https"]},
                        {"name": "open", "paths": ["/open"]},
                    ],
                }
            ],
        }
    )
    r = gw.request("GET", "/secure/get")
    assert r.status == 426
    assert r.json()["message"] == "Please use HTTPS protocol" and r.json()["request_id"]
    assert gw.request("GET", "/open/get").status == 200
