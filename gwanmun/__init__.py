"""gwanmun (관문, "the gate"): an API gateway on asyncio, uvloop and httptools."""

__version__ = "0.1.0"
