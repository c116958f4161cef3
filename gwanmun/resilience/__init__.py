"""Resilience state machines: circuit breakers, retry policy and budget, bulkheads, fallbacks.

Library code with no I/O and no awaits: the data plane (``proxy.Exchange``) calls it from its callbacks. The wiring
into the request path is pending; docs/resilience.md says where each call goes.
"""
