"""What the authentication plugins share: who the request is, as Kong tells the upstream, and Kong's rules for
several authentication plugins on one route.

- ``authenticated(ctx, consumer, credential)``: a credential was accepted. Sets ``ctx.consumer``, ``ctx.credential``,
  ``ctx.authenticated`` and Kong's upstream headers (``X-Consumer-ID``, ``X-Consumer-Custom-ID``,
  ``X-Consumer-Username``, ``X-Credential-Identifier``, ``X-Consumer-Groups``), and removes ``X-Anonymous-Consumer``.
- ``anonymous(ctx, consumer)``: authentication failed and the plugin has an ``anonymous`` consumer: the request goes
  on as that consumer, with ``X-Anonymous-Consumer: true``; ``ctx.authenticated`` stays False.
- ``skip(ctx, anonymous, run_on_preflight)``: Kong's "logical OR": a plugin whose ``anonymous`` is set does nothing
  when an earlier (higher priority) authentication plugin already accepted a credential. Without ``anonymous`` the
  plugins are a "logical AND": each must succeed.

The proxy strips client-sent copies of these headers before the plugins run, so what the upstream gets was set here.
"""

from __future__ import annotations

import re
from pydantic import field_validator

from gwanmun.plugins.base import BuildEnv, Consumer, Credential, Ctx, PluginConfig, _lines
# the identity lines are built in compiled code (plugins/context.py)
from gwanmun.plugins.context import consumer_lines, credential_line, wire_value  # noqa: F401

CONSUMER_ID = "X-Consumer-ID"
CONSUMER_CUSTOM_ID = "X-Consumer-Custom-ID"
CONSUMER_USERNAME = "X-Consumer-Username"
CREDENTIAL_IDENTIFIER = "X-Credential-Identifier"
CONSUMER_GROUPS = "X-Consumer-Groups"
AUTHENTICATED_GROUPS = "X-Authenticated-Groups"
ANONYMOUS = "X-Anonymous-Consumer"

_REALM = re.compile(r'[\x20\x21\x23-\x5b\x5d-\x7e]{1,128}\Z')  # printable ASCII without '"' and '\'


def authenticated(ctx: Ctx, consumer: Consumer | None, credential: Credential) -> None:
    """A credential was accepted. ``consumer`` is None only for a JWKS token that names no known consumer."""
    ctx.authenticate(consumer, credential)


def anonymous(ctx: Ctx, consumer: Consumer) -> None:
    """Authentication failed; the request goes on as the plugin's ``anonymous`` consumer."""
    ctx.consumer = consumer
    ctx.credential = None
    lines = consumer_lines(consumer)
    # an anonymous consumer's groups are not asserted: drop the groups line
    lines = b"".join(b"%b: %b\r\n" % (n, v) for n, v in _lines(lines) if n.lower() != b"x-consumer-groups")
    ctx.headers.set_identity(lines + ANONYMOUS_LINE)


ANONYMOUS_LINE = b"X-Anonymous-Consumer: true\r\n"


def skip(ctx: Ctx, anonymous_consumer: Consumer | None, run_on_preflight: bool = True) -> bool:
    """True when the plugin must not run: an OPTIONS request with ``run_on_preflight`` false, or Kong's logical OR
    (``anonymous`` set and an earlier plugin already authenticated the request)."""
    if not run_on_preflight and ctx.method == "OPTIONS":
        return True
    return anonymous_consumer is not None and ctx.authenticated


def resolve_anonymous(env: BuildEnv, ref: str | None) -> Consumer | None:
    """The ``anonymous`` consumer (by id, username or custom_id), found when the plugin is built: a reference to a
    consumer that does not exist is a configuration error (Kong finds out on the first failed request, with a 500)."""
    if not ref:
        return None
    consumer = env.consumer(ref)
    if consumer is None:
        raise ValueError(f"anonymous: no consumer with id, username or custom_id {ref!r}")
    return consumer


def check_realm(v: str | None) -> str | None:
    """A realm is sent in a quoted string: printable ASCII without '"' and '\\', at most 128 characters."""
    if v is not None and not _REALM.match(v):
        raise ValueError("realm must be 1 to 128 printable ASCII characters without '\"' or '\\'")
    return v


def check_anonymous(v: str | None) -> str | None:
    """Kong configs often carry ``anonymous: ""`` for "none"."""
    if v is None or v == "":
        return None
    if not v.isprintable() or len(v) > 256:
        raise ValueError("anonymous must be a consumer id, username or custom_id")
    return v


class AuthConfig(PluginConfig):
    """What the config of Kong's authentication plugins shares: ``anonymous`` (checked here; resolved to a consumer
    when the plugin is built) and ``realm`` (declared by each plugin, with its own default; checked here)."""

    anonymous: str | None = None

    @field_validator("anonymous")
    @classmethod
    def _anonymous(cls, v: str | None) -> str | None:
        return check_anonymous(v)

    @field_validator("realm", check_fields=False)
    @classmethod
    def _realm(cls, v: str | None) -> str | None:
        return check_realm(v)
