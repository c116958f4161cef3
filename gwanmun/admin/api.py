"""The Admin API: Kong's paths and shapes over the control plane (Starlette, served by uvicorn on the control thread).

Every endpoint is one ``Op`` in ``operations()``; the same table builds the routes and the OpenAPI document
(``gwanmun.admin.openapi``, served at ``/openapi.json``). Handlers are all ``async`` (Starlette would run a plain
function in a thread pool, and the control thread's fork gate only covers the loop's own thread).

Authentication (``gateway.admin.tokens``): ``Authorization: Bearer <token>`` or ``Kong-Admin-Token: <token>``,
checked against the stored hashes; role ``read-only`` may only read (GET/HEAD), ``admin`` may do everything.
Without tokens (allowed on loopback listeners only) every caller is an admin. ``/openapi.json`` needs no token.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..auth.secrets import verify_key
from ..store import SchemaError, StoreUnavailable
from ..store import doc as docs
from ..store.doc import KINDS
from .entities import ApiError, Scope, lookup, not_found, output, page

if TYPE_CHECKING:
    from .control import ControlPlane

log = logging.getLogger("gwanmun")

READ_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_BODY = 64 * 1024 * 1024
MAX_VERSION = 2**62  # version numbers are 64-bit in both stores


@dataclass
class Op:
    method: str
    path: str
    operation_id: str
    summary: str
    handler: Callable[[Request, str], Awaitable[Response]]
    tag: str
    kind: str | None = None  # the entity kind it returns or takes
    body: str | None = None  # "entity" (the kind's schema), "config", "rollback"
    listing: bool = False  # takes offset/size/tags
    statuses: tuple[int, ...] = (200,)
    extra_query: tuple[tuple[str, dict], ...] = ()
    params: dict[str, str] = field(default_factory=dict)  # path parameter -> description

    @property
    def write(self) -> bool:
        return self.method not in READ_METHODS


def _json(body: Any, status: int = 200, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status, headers=headers)


def _error(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="gwanmun-admin"'} if exc.status == 401 else None
    return _json(exc.body, exc.status, headers)


async def _body(request: Request, *, yaml_ok: bool = False) -> Any:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, {"message": "request body too large"})
    if not raw.strip():
        return {}
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if yaml_ok and ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/plain"):
        return _parse_yaml(raw)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        if yaml_ok:
            return _parse_yaml(raw)
        raise ApiError(400, {"message": "Cannot parse JSON body"}) from None


def _parse_yaml(raw: bytes | str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ApiError(400, {"code": 14, "name": "invalid declarative configuration",
                             "message": f"failed parsing declarative configuration: {exc}"}) from None


class Api:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    # -- auth -----------------------------------------------------------------------------------------------------
    def authorize(self, request: Request, write: bool) -> str:
        """Who is asking (for the history); raises 401/403."""
        client = request.client.host if request.client else "?"
        tokens = self.cp.settings.tokens
        if not tokens:
            who = request.headers.get("kong-admin-user") or "admin"
            return f"{who[:64]} ({client})"
        presented = request.headers.get("kong-admin-token")
        auth = request.headers.get("authorization", "")
        if presented is None and auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
        if not presented:
            raise ApiError(401, {"message": "Unauthorized: an admin token is required "
                                            "(Authorization: Bearer <token>, or Kong-Admin-Token)"})
        for t in tokens:
            if verify_key(t.token_hash, presented):
                if write and t.role != "admin":
                    raise ApiError(403, {"message": f"Forbidden: the token '{t.name}' is read-only"})
                return f"{t.name} ({client})"
        raise ApiError(401, {"message": "Unauthorized: invalid admin token"})

    def wrap(self, op: Op, public: bool = False):
        async def endpoint(request: Request) -> Response:
            try:
                who = "" if public else self.authorize(request, op.write)
                return await op.handler(request, who)
            except ApiError as exc:
                return _error(exc)
            except (StoreUnavailable, SchemaError) as exc:
                return _json({"message": f"the config store is unavailable ({exc}); the node keeps serving its "
                                         f"current config, retry the change later"}, 503)
            except Exception:  # noqa: BLE001
                log.error("admin_error", exc_info=True, extra={"fields": {
                    "event": "admin_error", "method": request.method, "path": request.url.path}})
                return _json({"message": "An unexpected error occurred"}, 500)

        endpoint.__name__ = op.operation_id
        return endpoint

    # -- scopes ---------------------------------------------------------------------------------------------------
    @staticmethod
    def scope(doc: dict, parent: tuple[str, str, str] | None, params: dict) -> Scope | None:
        """``parent`` = (parent kind, reference field, path parameter)."""
        if parent is None:
            return None
        kind, ref, param = parent
        found = lookup(doc, kind, params[param])
        if found is None:
            raise not_found()
        return Scope(ref, found[1]["id"])

    # -- generic entity handlers ----------------------------------------------------------------------------------
    def h_list(self, kind: str, parent=None):
        async def handler(request: Request, who: str) -> Response:
            doc = self.cp.view()
            scope = self.scope(doc, parent, request.path_params)
            items = [output(kind, e, doc) for e in docs.entities(doc, kind) if scope is None or scope.matches(e)]
            custom_id = request.query_params.get("custom_id") if kind == "consumers" else None
            if custom_id is not None:  # Kong's one list filter
                items = [e for e in items if e.get("custom_id") == custom_id]
            return _json(page(items, request.url.path, dict(request.query_params)))

        return handler

    def h_get(self, kind: str, param: str, parent=None):
        async def handler(request: Request, who: str) -> Response:
            doc = self.cp.view()
            scope = self.scope(doc, parent, request.path_params)
            found = lookup(doc, kind, request.path_params[param], scope)
            if found is None:
                raise not_found()
            return _json(output(kind, found[1], doc))

        return handler

    async def _write(self, request: Request, who: str, kind: str, mutate, status: int) -> Response:
        _, doc = await self.cp.change(kind, mutate, author=who, message=f"{request.method} {request.url.path}")
        eid = getattr(mutate, "eid", None)
        found = lookup(doc, kind, eid) if eid else None
        if found is None:
            raise not_found()
        return _json(output(kind, found[1], doc), status)

    def h_create(self, kind: str, parent=None):
        async def handler(request: Request, who: str) -> Response:
            body = await _body(request)
            params = request.path_params

            def mutate(w):
                mutate.eid = w.create(kind, body, self.scope(w.doc, parent, params))
                return mutate.eid

            return await self._write(request, who, kind, mutate, 201)

        return handler

    def h_upsert(self, kind: str, param: str, parent=None):
        async def handler(request: Request, who: str) -> Response:
            body = await _body(request)
            params = request.path_params

            def mutate(w):
                mutate.eid, _ = w.upsert(kind, params[param], body, self.scope(w.doc, parent, params))
                return mutate.eid

            return await self._write(request, who, kind, mutate, 200)

        return handler

    def h_update(self, kind: str, param: str, parent=None):
        async def handler(request: Request, who: str) -> Response:
            body = await _body(request)
            params = request.path_params

            def mutate(w):
                mutate.eid = w.update(kind, params[param], body, self.scope(w.doc, parent, params))
                return mutate.eid

            return await self._write(request, who, kind, mutate, 200)

        return handler

    def h_delete(self, kind: str, param: str, parent=None):
        async def handler(request: Request, who: str) -> Response:
            params = request.path_params

            def mutate(w):
                return w.delete(kind, params[param], self.scope(w.doc, parent, params))

            await self.cp.change(kind, mutate, author=who, message=f"DELETE {request.url.path}")
            return Response(status_code=204)

        return handler

    def h_route_service(self):
        async def handler(request: Request, who: str) -> Response:
            doc = self.cp.view()
            found = lookup(doc, "routes", request.path_params["route"])
            if found is None or not found[1].get("service"):
                raise not_found()
            svc = lookup(doc, "services", found[1]["service"])
            if svc is None:
                raise not_found()
            return _json(output("services", svc[1], doc))

        return handler

    # -- node, status, config ---------------------------------------------------------------------------------------
    async def h_root(self, request: Request, who: str) -> Response:
        from ..plugins import registry

        cp = self.cp
        return _json({
            "tagline": "Welcome to gwanmun", "version": __version__, "hostname": socket.gethostname(),
            "plugins": {"available_on_server": sorted(registry.names()),
                        "enabled_in_cluster": sorted({p.get("name") for p in docs.entities(cp.view(), "plugins")})},
            "configuration": {"database": cp.mode, "admin_listen": list(cp.settings.listen),
                              "admin_auth": bool(cp.settings.tokens)},
        })

    async def h_status(self, request: Request, who: str) -> Response:
        return _json(self.cp.status())

    async def h_ready(self, request: Request, who: str) -> Response:
        ok = self.cp.prepared_hash is not None
        return _json({"message": "ready" if ok else "no config loaded yet"}, 200 if ok else 503)

    async def h_get_config(self, request: Request, who: str) -> Response:
        cp = self.cp
        cur = cp.current
        return _json({"config": docs.to_yaml(docs.nest(cp.view())), "version": cur.version if cur else 0,
                      "hash": cur.hash if cur else None})

    async def h_post_config(self, request: Request, who: str) -> Response:
        body = await _body(request, yaml_ok=True)
        if isinstance(body, dict) and set(body) == {"config"} and isinstance(body["config"], str):
            body = _parse_yaml(body["config"])  # Kong's form: {"config": "<yaml or json text>"}
        before = self.cp.current
        v = await self.cp.replace(body, author=who, message=f"POST {request.url.path}")
        if v is None:
            if request.query_params.get("check_hash") in ("1", "true"):
                return Response(status_code=304)
            v = before
        doc = v.doc if v is not None and v.doc is not None else docs.empty()
        out: dict[str, Any] = {k: [output(k, e, doc) for e in docs.entities(doc, k)] for k in KINDS
                               if docs.entities(doc, k)}
        out["version"] = v.version if v else 0
        out["hash"] = v.hash if v else None
        return _json(out, 201)

    async def h_versions(self, request: Request, who: str) -> Response:
        args = dict(request.query_params)
        from .entities import page_size

        size = page_size(args.get("size"))
        before = None
        if args.get("offset"):
            try:
                before = int(args["offset"])
                if not 0 < before < MAX_VERSION:
                    raise ValueError
            except ValueError:
                raise ApiError(400, {"code": 7, "name": "invalid offset",
                                     "message": f"'{args['offset']}' is not a valid offset"}) from None
        items = await self.cp.store.history(size + 1, before)
        data = [v.meta() for v in items[:size]]
        body: dict[str, Any] = {"data": data, "next": None}
        if len(items) > size and data:
            body["offset"] = str(data[-1]["version"])
            body["next"] = f"{request.url.path}?offset={body['offset']}&size={size}"
        return _json(body)

    def _version_no(self, request: Request) -> int:
        raw = request.path_params["version"]
        try:
            number = int(raw)
        except ValueError:
            raise not_found() from None
        if not 0 < number < MAX_VERSION:
            raise not_found()
        return number

    async def h_version(self, request: Request, who: str) -> Response:
        v = await self.cp.store.get(self._version_no(request))
        if v is None:
            raise not_found()
        return _json(v.to_json())

    async def h_diff(self, request: Request, who: str) -> Response:
        store = self.cp.store
        to = await store.get(self._version_no(request))
        if to is None:
            raise not_found()
        raw_from = request.query_params.get("from")
        if raw_from is not None:
            try:
                from_no = int(raw_from)
            except ValueError:
                from_no = -1
            if not 0 <= from_no < MAX_VERSION:
                raise ApiError(400, {"message": "'from' must be a version number"})
        else:
            from_no = to.parent or 0
        old = await store.get(from_no) if from_no else None
        if from_no and old is None:
            raise ApiError(404, {"message": f"no version {from_no}"})
        old_doc = old.doc if old is not None else None
        assert to.doc is not None
        return _json({"from": from_no, "to": to.version, "changes": docs.changes(old_doc, to.doc),
                      "diff": docs.text_diff(old_doc, to.doc, f"version {from_no}", f"version {to.version}")})

    async def h_rollback(self, request: Request, who: str) -> Response:
        body = await _body(request)
        target = body.get("version") if isinstance(body, dict) else None
        if not isinstance(target, int) or isinstance(target, bool) or not 0 < target < MAX_VERSION:
            raise ApiError(400, {"code": 2, "name": "schema violation",
                                 "message": "schema violation (version: expected a version number)",
                                 "fields": {"version": "expected a version number"}})
        v = await self.cp.rollback(target, author=who)
        cur = v or self.cp.current
        return _json({**(cur.meta() if cur else {}), "unchanged": v is None}, 201 if v else 200)

    async def h_enabled(self, request: Request, who: str) -> Response:
        from ..plugins import registry

        return _json({"enabled_plugins": sorted(registry.names())})

    async def h_plugin_schema(self, request: Request, who: str) -> Response:
        from ..plugins import registry

        name = request.path_params["name"]
        try:
            cls = registry.get(name)
        except registry.PluginLoadError as exc:
            raise ApiError(404, {"message": str(exc)}) from None
        if cls is None:
            raise ApiError(404, {"message": f"No plugin named '{name}'"})
        return _json(cls.Config.model_json_schema())

    async def h_openapi(self, request: Request, who: str) -> Response:
        from .openapi import spec

        return _json(spec(operations(self)))


# ---------------------------------------------------------------------------------------------------------------
# the route table
# ---------------------------------------------------------------------------------------------------------------

# (kind, path parameter name) of the top-level collections
_TOP = (
    ("services", "service"), ("routes", "route"), ("upstreams", "upstream"), ("certificates", "certificate"),
    ("snis", "sni"), ("ca_certificates", "ca_certificate"), ("consumers", "consumer"),
    ("consumer_groups", "consumer_group"), ("plugins", "plugin"),
)
# nested collections: (parent kind, parent parameter, child kind, reference field, child parameter)
_NESTED = (
    ("services", "service", "routes", "service", "route"),
    ("services", "service", "plugins", "service", "plugin"),
    ("routes", "route", "plugins", "route", "plugin"),
    ("consumers", "consumer", "plugins", "consumer", "plugin"),
    ("upstreams", "upstream", "targets", "upstream", "target"),
    ("certificates", "certificate", "snis", "certificate", "sni"),
    ("consumers", "consumer", "keyauth_credentials", "consumer", "keyauth_credential"),
    ("consumers", "consumer", "basicauth_credentials", "consumer", "basicauth_credential"),
    ("consumers", "consumer", "jwt_secrets", "consumer", "jwt_secret"),
    ("consumers", "consumer", "acls", "consumer", "acl"),
)
_CREDENTIALS = (("keyauth_credentials", "keyauth_credential"), ("basicauth_credentials", "basicauth_credential"),
                ("jwt_secrets", "jwt_secret"), ("acls", "acl"))

_ENTITY_STATUSES = {"list": (200, 400, 401, 404), "create": (201, 400, 401, 403, 404, 405, 409, 503),
                    "get": (200, 401, 404), "upsert": (200, 400, 401, 403, 404, 405, 409, 503),
                    "update": (200, 400, 401, 403, 404, 405, 409, 503), "delete": (204, 400, 401, 403, 404, 405, 503)}


def operations(api: Api) -> list[Op]:
    ops: list[Op] = []

    def entity_ops(base: str, kind: str, param: str, parent=None, *, create=True, put=True, tag: str) -> None:
        single = f"{base}/{{{param}}}"
        name = base.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace("-", "_")
        params = {param: f"the {docs.SINGULAR[kind].replace('_', ' ')}'s id or {_keys(kind)}"}
        if parent is not None:
            params[parent[2]] = f"the {docs.SINGULAR[parent[0]].replace('_', ' ')}'s id or {_keys(parent[0])}"
        ops.append(Op("GET", base, f"list_{name}", f"List {_plural(kind)}", api.h_list(kind, parent), tag, kind,
                      listing=True, statuses=_ENTITY_STATUSES["list"], params=params,
                      extra_query=(("custom_id", {"type": "string"}),) if kind == "consumers" else ()))
        if create:
            ops.append(Op("POST", base, f"create_{name}", f"Create a {_one(kind)}", api.h_create(kind, parent), tag,
                          kind, body="entity", statuses=_ENTITY_STATUSES["create"], params=params))
        ops.append(Op("GET", single, f"get_{name}", f"Get a {_one(kind)}", api.h_get(kind, param, parent), tag, kind,
                      statuses=_ENTITY_STATUSES["get"], params=params))
        if put:
            ops.append(Op("PUT", single, f"upsert_{name}", f"Create or replace a {_one(kind)}",
                          api.h_upsert(kind, param, parent), tag, kind, body="entity",
                          statuses=_ENTITY_STATUSES["upsert"], params=params))
        ops.append(Op("PATCH", single, f"update_{name}", f"Update a {_one(kind)}", api.h_update(kind, param, parent),
                      tag, kind, body="entity", statuses=_ENTITY_STATUSES["update"], params=params))
        ops.append(Op("DELETE", single, f"delete_{name}", f"Delete a {_one(kind)}", api.h_delete(kind, param, parent),
                      tag, kind, statuses=_ENTITY_STATUSES["delete"], params=params))

    ops += [
        Op("GET", "/", "node_info", "Node information", api.h_root, "node"),
        Op("GET", "/status", "status", "Node status: database reachability, config version and hash", api.h_status,
           "node"),
        Op("GET", "/status/ready", "ready", "Readiness: 200 once a config is loaded", api.h_ready, "node",
           statuses=(200, 503)),
        Op("GET", "/config", "get_config", "The current declarative config (YAML text)", api.h_get_config, "config"),
        Op("POST", "/config", "post_config", "Replace the whole declarative config", api.h_post_config, "config",
           body="config", statuses=(201, 304, 400, 401, 403, 503),
           extra_query=(("check_hash", {"type": "string", "enum": ["0", "1"]}),)),
        Op("GET", "/config/versions", "list_versions", "Config versions, newest first", api.h_versions, "history",
           listing=True, statuses=(200, 400, 401)),
        Op("GET", "/config/versions/{version}", "get_version", "One config version with its document",
           api.h_version, "history", statuses=(200, 401, 404), params={"version": "a version number"}),
        Op("GET", "/config/versions/{version}/diff", "diff_version",
           "What a version changed (from its parent, or ?from=N)", api.h_diff, "history",
           statuses=(200, 400, 401, 404), params={"version": "a version number"},
           extra_query=(("from", {"type": "integer", "minimum": 0}),)),
        Op("POST", "/config/rollback", "rollback", "Make an earlier version's config current (as a new version)",
           api.h_rollback, "history", body="rollback", statuses=(200, 201, 400, 401, 403, 404, 503)),
        Op("GET", "/plugins/enabled", "enabled_plugins", "The plugins this node can run", api.h_enabled, "plugins"),
        Op("GET", "/schemas/plugins/{name}", "plugin_schema", "A plugin's config schema (JSON Schema)",
           api.h_plugin_schema, "plugins", statuses=(200, 401, 404), params={"name": "a plugin name"}),
    ]
    for kind, param in _TOP:
        entity_ops(f"/{KINDS[kind].api}", kind, param, tag=kind)
    for parent_kind, parent_param, kind, ref, param in _NESTED:
        base = f"/{KINDS[parent_kind].api}/{{{parent_param}}}/{KINDS[kind].nested_api or KINDS[kind].api}"
        entity_ops(base, kind, param, (parent_kind, ref, parent_param), tag=kind)
    for kind, param in _CREDENTIALS:  # /key-auths, ...: every consumer's, by id
        entity_ops(f"/{KINDS[kind].api}", kind, param, create=False, put=False, tag=kind)
    ops.append(Op("GET", "/routes/{route}/service", "get_route_service", "The route's service",
                  api.h_route_service(), "services", "services", statuses=(200, 401, 404),
                  params={"route": "the route's id or name"}))
    return ops


def _plural(kind: str) -> str:
    return kind.replace("_", " ")


def _one(kind: str) -> str:
    return docs.SINGULAR[kind].replace("_", " ")


def _keys(kind: str) -> str:
    keys = KINDS[kind].endpoint_keys
    return " or ".join(keys) if keys else "id"


def build_app(cp: ControlPlane) -> Starlette:
    api = Api(cp)
    routes = []
    seen: set[tuple[str, str]] = set()
    for op in operations(api):
        if (op.method, op.path) in seen:
            continue
        seen.add((op.method, op.path))
        routes.append(Route(op.path, api.wrap(op), methods=[op.method]))
    openapi = Op("GET", "/openapi.json", "openapi", "This API's OpenAPI document", api.h_openapi, "node")
    routes.insert(0, Route("/openapi.json", api.wrap(openapi, public=True), methods=["GET"]))

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        message = {404: "Not found", 405: "Method not allowed"}.get(status, getattr(exc, "detail", "error"))
        return _json({"message": message}, status)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
