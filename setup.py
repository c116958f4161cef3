"""Build: the data plane's hot modules are compiled with mypyc (about 20% less CPU per request, measured).

The compiled modules are the same Python sources; nothing else changes. Set GWANMUN_MYPYC=0 to install pure Python
(for example while editing the data plane: an editable install otherwise keeps using the compiled .so files until
the next ``pip install -e .``; ``gwanmun version`` and the start-up log say which modules are compiled and warn
when one is older than its source). If compiling fails (no C compiler), the install falls back to pure Python.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Keep in sync with gwanmun/native.py HOT_MODULES.
HOT_MODULES = [
    "gwanmun/proxy.py",
    "gwanmun/http/downstream.py",
    "gwanmun/http/wire.py",
    "gwanmun/http/normalize.py",
    "gwanmun/http/validate.py",
    "gwanmun/observability/accesslog.py",
    "gwanmun/observability/recorder.py",
    "gwanmun/upstream/connection.py",
    "gwanmun/upstream/pool.py",
    "gwanmun/upstream/balancer.py",
    "gwanmun/routing/paths.py",
    "gwanmun/resilience/breaker.py",
    "gwanmun/resilience/retry.py",
    "gwanmun/resilience/bulkhead.py",
    "gwanmun/resilience/fallback.py",
    "gwanmun/resilience/registry.py",
    "gwanmun/plugins/context.py",
    "gwanmun/plugins/chain.py",
    "gwanmun/plugins/fastpath.py",
    "gwanmun/ratelimit/algorithms.py",
    "gwanmun/ratelimit/periods.py",
    "gwanmun/ratelimit/shared.py",
    "gwanmun/ratelimit/local.py",
]


class OptionalBuildExt(build_ext):
    """A failed compile leaves a working pure-Python install rather than a failed one."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            print(f"gwanmun: compiling the data plane failed ({exc}); installing pure Python", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"gwanmun: could not compile {ext.name} ({exc}); it stays pure Python", file=sys.stderr)


def ext_modules():
    if os.environ.get("GWANMUN_MYPYC", "1") == "0":
        # An editable install keeps compiled modules beside their sources: remove them, or they would still win.
        import glob

        for module in HOT_MODULES:
            for path in glob.glob(module[:-3] + ".cpython-*.so"):
                os.remove(path)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("gwanmun: mypyc not available; installing pure Python", file=sys.stderr)
        return []
    try:
        # Only the hot modules are checked strictly; what they import is read but not held to mypyc's rules.
        return mypycify(["--follow-imports=silent", "--ignore-missing-imports", *HOT_MODULES], opt_level="3")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a type error mypyc refuses to compile
        print(f"gwanmun: mypyc refused the data plane ({exc}); installing pure Python", file=sys.stderr)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
