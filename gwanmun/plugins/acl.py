"""``acl``: allow or deny consumers by group (Kong's acl plugin, priority 950, after the authentication plugins).

A consumer's groups are its ``acls`` groups and, with ``include_consumer_groups`` (our default; Kong Enterprise's
option, off there), the names of its consumer groups. As Kong 3.x:

- No consumer: the groups another plugin put in ``ctx.shared["authenticated_groups"]`` (a list of names; Kong's
  ``authenticated_groups``) are used; without them, 401 "Unauthorized", or 403 "You cannot consume this service"
  when a credential was accepted (a JWKS token that names no consumer).
- The anonymous consumer (a consumer without a credential): ``authenticated_groups`` win over its own groups when
  set; ``always_use_authenticated_groups`` makes them win for every consumer.
- ``allow``: the request passes when one of the groups is listed; ``deny``: when none is. Otherwise 403
  "You cannot consume this service".
- Passing, unless ``hide_groups_header``: ``X-Consumer-Groups`` (or ``X-Authenticated-Groups`` for authenticated
  groups) is set to the groups, joined with ", " (removed when there are none).

The decision for a consumer is computed once per config and remembered.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from gwanmun.plugins import identity
from gwanmun.plugins.base import BuildEnv, Consumer, Ctx, Plugin, PluginConfig, Reply

FORBIDDEN = "You cannot consume this service"
UNAUTHORIZED = "Unauthorized"

Group = Annotated[str, Field(min_length=1, max_length=256)]


class AclConfig(PluginConfig):
    allow: list[Group] | None = None
    deny: list[Group] | None = None
    hide_groups_header: bool = False
    always_use_authenticated_groups: bool = False
    include_consumer_groups: bool = True

    @field_validator("allow", "deny")
    @classmethod
    def _groups(cls, v: list[str] | None) -> list[str] | None:
        if not v:
            return None  # decK writes "deny: []" beside an allow list
        for g in v:
            if not g.isprintable():
                raise ValueError(f"group name {g!r} must be printable")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _one(self) -> AclConfig:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("set exactly one of 'allow' and 'deny' (a non-empty list of group names)")
        return self


class Acl(Plugin):
    name = "acl"
    priority = 950
    Config = AclConfig

    def __init__(self, config: AclConfig, env: BuildEnv) -> None:
        super().__init__(config, env)
        self.deny = config.deny is not None
        self.groups = frozenset(config.deny if config.deny is not None else config.allow or ())
        self.decisions: dict[Consumer, tuple[bool, str]] = {}  # consumer -> (blocked, header value)

    def _decide(self, groups: tuple[str, ...] | list[str]) -> tuple[bool, str]:
        hit = any(g in self.groups for g in groups)
        return (hit if self.deny else not hit), ", ".join(groups)

    def _consumer_groups(self, consumer: Consumer) -> tuple[str, ...]:
        if self.config.include_consumer_groups and consumer.groups:
            return tuple(dict.fromkeys((*consumer.acl_groups, *consumer.groups)))
        return consumer.acl_groups

    @staticmethod
    def _authenticated_groups(ctx: Ctx) -> list[str] | None:
        groups = ctx.shared.get("authenticated_groups")
        if isinstance(groups, (list, tuple)):
            return [g for g in groups if isinstance(g, str)]
        return None

    def access(self, ctx: Ctx) -> Reply | None:
        consumer = ctx.consumer
        header = identity.CONSUMER_GROUPS
        decision: tuple[bool, str] | None = None
        if consumer is None or ctx.credential is None or self.config.always_use_authenticated_groups:
            groups = self._authenticated_groups(ctx)
            if groups is not None:
                decision = self._decide(groups)
                header = identity.AUTHENTICATED_GROUPS
            elif consumer is None:
                if ctx.credential is not None:
                    return Reply.error_(403, FORBIDDEN)
                return Reply.error_(401, UNAUTHORIZED)
        if decision is None:
            assert consumer is not None
            decision = self.decisions.get(consumer)
            if decision is None:
                decision = self.decisions[consumer] = self._decide(self._consumer_groups(consumer))
        blocked, value = decision
        if blocked:
            return Reply.error_(403, FORBIDDEN)
        if not self.config.hide_groups_header:
            if value:
                ctx.headers.set(header, identity.wire_value(value))
            else:
                ctx.headers.remove(header)
        return None
