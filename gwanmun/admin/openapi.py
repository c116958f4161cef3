"""The Admin API's OpenAPI 3.1 document, generated from the route table (``api.operations``) and the config models.

Request bodies use each entity model's JSON Schema (pydantic), adjusted to what the API takes: references as
``{"id": ...}``, ``{"name": ...}`` or a string, nested lists left out (they have their own endpoints), timestamps
ignored, the parent reference optional (a nested path sets it). Responses are described loosely (an object, a page,
an error with ``message``): the entity shapes are the config reference's (docs/config.md, docs/plugins.md).
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from ..store.doc import KINDS

_REF = {"oneOf": [{"type": "string", "minLength": 1},
                  {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"],
                   "additionalProperties": False},
                  {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"],
                   "additionalProperties": False},
                  {"type": "null"}]}

_ERROR = {"type": "object", "required": ["message"],
          "properties": {"message": {"type": "string"}, "name": {"type": "string"}, "code": {"type": "integer"},
                         "fields": {"type": "object"}}}
_PAGE = {"type": "object", "required": ["data", "next"],
         "properties": {"data": {"type": "array", "items": {"type": "object"}},
                        "next": {"type": ["string", "null"]}, "offset": {"type": "string"}}}

_DESCRIPTIONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified (check_hash: the same config)",
                 400: "Invalid request or config (with field paths)", 401: "No valid admin token",
                 403: "The token's role may not do this", 404: "Not found",
                 405: "Not allowed in this mode (DB-less: only POST /config writes)",
                 409: "A unique field is already taken", 413: "Request body too large",
                 503: "The config store is unreachable (the node keeps serving)"}


_EXAMPLES = {
    "services": {"name": "example-service", "url": "http://127.0.0.1:9/"},
    "routes": {"name": "example-route", "paths": ["/example"]},
    "upstreams": {"name": "example.upstream"},
    "targets": {"target": "127.0.0.1:9", "weight": 100},
    "consumers": {"username": "example-user"},
    "consumer_groups": {"name": "example-group"},
    "plugins": {"name": "correlation-id"},
    "keyauth_credentials": {"key": "example-key-0123456789"},
    "basicauth_credentials": {"username": "example-user", "password": "example-password"},
    "jwt_secrets": {"key": "example-issuer", "secret": "example-secret"},
    "acls": {"group": "example-group"},
    "snis": {"name": "example.test"},
}


def _entity_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """(components, {kind: schema}) for request bodies."""
    components: dict[str, Any] = {}
    bodies: dict[str, Any] = {}
    for kind, k in KINDS.items():
        schema = copy.deepcopy(k.model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}"))
        for name, sub in schema.pop("$defs", {}).items():
            components.setdefault(name, sub)
        props = schema.setdefault("properties", {})
        for f in k.nested:
            if f == "snis" and kind == "certificates":
                props[f] = {"type": "array", "items": {"type": "string"}}
            else:
                props.pop(f, None)
        for f in k.refs:
            props[f] = _REF
        if kind == "services":
            props["url"] = {"type": "string"}
        props["created_at"] = {"type": "integer"}
        props["updated_at"] = {"type": "integer"}
        schema["required"] = [r for r in schema.get("required", []) if r not in k.refs]
        schema.pop("title", None)
        bodies[kind] = schema
    return components, bodies


def spec(ops) -> dict[str, Any]:
    components, bodies = _entity_schemas()
    schemas = {**components, "Error": _ERROR, "Page": _PAGE,
               **{f"{kind}_body": body for kind, body in bodies.items()}}
    paths: dict[str, Any] = {}
    for op in ops:
        item = paths.setdefault(op.path, {})
        parameters = [{"name": name, "in": "path", "required": True, "description": desc,
                       "schema": {"type": "string", "minLength": 1}} for name, desc in op.params.items()
                      if "{" + name + "}" in op.path]
        if op.listing:
            parameters += [
                {"name": "offset", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "the `offset` of the previous page"},
                {"name": "size", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}, "description": "page size (100)"},
            ]
            if op.kind is not None:
                parameters.append({"name": "tags", "in": "query", "required": False, "schema": {"type": "string"},
                                   "description": "only entities with these tags: `a,b` (all) or `a/b` (any)"})
        for name, schema in op.extra_query:
            parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
        responses: dict[str, Any] = {}
        for status in op.statuses:
            r: dict[str, Any] = {"description": _DESCRIPTIONS.get(status, "")}
            if status in (204, 304):
                pass
            elif status >= 400:
                r["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            elif op.listing:
                r["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}}
            else:
                r["content"] = {"application/json": {"schema": {"type": "object"}}}
            responses[str(status)] = r
        operation: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                                     "responses": responses}
        if parameters:
            operation["parameters"] = parameters
        if op.body == "entity" and op.kind is not None:
            media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{op.kind}_body"}}
            if op.kind in _EXAMPLES:
                media["example"] = _EXAMPLES[op.kind]
            operation["requestBody"] = {"required": True, "content": {"application/json": media}}
        elif op.body == "config":
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"type": "object", "required": ["_format_version"],
                                                "properties": {"_format_version": {"type": "string",
                                                                                   "enum": ["3.0"]}}}},
                "application/yaml": {"schema": {"type": "string"}}}}
        elif op.body == "rollback":
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["version"],
                "properties": {"version": {"type": "integer", "minimum": 1}}}}}}
        item[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "gwanmun Admin API", "version": __version__,
                 "description": "Kong-compatible Admin API of the gwanmun gateway (docs/admin.md)."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "kongAdminToken": {"type": "apiKey", "in": "header", "name": "Kong-Admin-Token"}}},
        "security": [{"bearer": []}, {"kongAdminToken": []}, {}],
    }
