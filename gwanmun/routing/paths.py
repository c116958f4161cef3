"""The path sent upstream: Kong's ``strip_path`` and ``path_handling`` rules.

Kong 3.x's default router flavor (``traditional_compatible``, also ``expressions``) always builds the
upstream path with the ``v0`` algorithm (``kong/router/utils.lua`` ``get_upstream_uri_v0``); Kong's
route schema says ``path_handling='v1'`` "will not work under traditional_compatible".  Only the
``traditional`` flavor honours ``v1`` (``kong/router/traditional.lua``).  ``upstream_path`` does the
same: pass ``flavor="traditional"`` to get ``v1`` for routes that ask for it.

Definitions: *base* is the service path (``/`` when unset); *prefix* is the matched part of the request
path when the route has ``strip_path`` and a path matched (the plain prefix, or the text a regex path
matched), else ``/``; *postfix* is the request path after *prefix*, where a leading ``./`` or ``../``
or a whole ``.``/``..`` is dropped.

v0 (``path_handling: v0``, and every route under ``traditional_compatible``):

=================  ==========  =================  ====================================================
base ends in ``/``  strip_path  postfix            upstream path
=================  ==========  =================  ====================================================
yes                no          (any)              base + request path without its first ``/``
yes                yes         empty              ``/`` if base is ``/``; else base if the request
                                                  path ends in ``/``, else base without its last ``/``
yes                yes         starts with ``/``  base without its last ``/`` + postfix
yes                yes         other              base + postfix
no                 no          (any)              base if the request path is ``/``, else
                                                  base + request path
no                 yes         empty              base + ``/`` if the request path is longer than
                                                  ``/`` and ends in ``/``, else base
no                 yes         starts with ``/``  base + postfix
no                 yes         other              base + ``/`` + postfix
=================  ==========  =================  ====================================================

v1 (only with ``flavor="traditional"``): without strip_path, base + request path without its first
``/``; with strip_path, base + postfix, dropping one ``/`` when base ends and postfix starts with one.
(With strip_path but no path matched, postfix is the request path without its first ``/``.)
"""

from __future__ import annotations

__all__ = ["upstream_path", "sanitize_postfix"]


def sanitize_postfix(postfix: str) -> str:
    """Kong's ``sanitize_uri_postfix``: drop a leading ``./`` / ``../`` or a whole ``.`` / ``..``."""
    if not postfix:
        return postfix
    if postfix == "." or postfix == "..":
        return ""
    if postfix.startswith("./"):
        return postfix[2:]
    if postfix.startswith("../"):
        return postfix[3:]
    return postfix


def _v0(strip: bool, postfix: str, req: str, base: str) -> str:
    if base.endswith("/"):
        if strip:
            if postfix == "":
                if base == "/":
                    return "/"
                if req.endswith("/"):
                    return base
                return base[:-1]
            if postfix.startswith("/"):
                return base[:-1] + postfix  # no double slash
            return base + postfix
        return base + req[1:]
    if strip:
        if postfix == "":
            if len(req) > 1 and req.endswith("/"):
                return base + "/"
            return base
        if postfix.startswith("/"):
            return base + postfix
        return base + "/" + postfix
    if req == "/":
        return base
    return base + req


def upstream_path(service_path: str | None, match, request_path: str, *,
                  flavor: str = "traditional_compatible") -> str:
    """The upstream request path (without query string) for ``match`` of ``request_path``."""
    route = match.route
    if (service_path is None or service_path == "/") and flavor != "traditional" and request_path[:1] == "/":
        # Fast path for the common case (no service path): the v0 table reduces to these lines.
        if not route.strip_path:
            return request_path
        matched = match.matched_path or "/"
        if matched == "/" and (len(request_path) == 1 or (request_path[1] != "/" and request_path[1] != ".")):
            return request_path  # stripping "/" changes nothing: hand back the same object (the proxy reuses its bytes)
        postfix = request_path[len(matched):]
        if not postfix:
            return "/"
        if postfix[0] == "/":
            return postfix
        if postfix[0] != ".":  # "./" and "../" go through sanitize_postfix below
            return "/" + postfix
    base = service_path or "/"
    strip = route.strip_path
    prefix = match.matched_path if strip else None
    if route.path_handling == "v1" and flavor == "traditional":
        if prefix is not None:
            postfix = sanitize_postfix(request_path[len(prefix):])
        else:
            postfix = request_path[1:]
        if strip:
            if base.endswith("/") and postfix.startswith("/"):
                return base[:-1] + postfix
            return base + postfix
        return base + request_path[1:]
    postfix = sanitize_postfix(request_path[len(prefix or "/"):])
    return _v0(strip, postfix, request_path, base)
