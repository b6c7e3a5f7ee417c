"""Is a URL's host reachable? Asked before a download, so an offline machine fails in seconds.

Compute nodes are often offline, and there a download does not always fail fast: a DNS lookup
or a connect to a firewalled host can block for minutes. One TCP connect, bounded in time,
tells first.
"""

from __future__ import annotations

import socket
import threading
import urllib.request
from urllib.parse import urlparse

_DEFAULT_PORTS = {"https": 443, "http": 80}


def _endpoint(url: str) -> tuple[str, int]:
    """The (host, port) a request for `url` connects to: the proxy's when urllib would use one."""
    parts = urlparse(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or _DEFAULT_PORTS.get(parts.scheme, 443)


def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why `url`'s host (or its proxy) cannot be reached, None if it can; never blocks longer
    than about `timeout` seconds."""
    host, port = _endpoint(url)
    result: list[str | None] = [f"{host}: no answer within {timeout:g} s"]

    def probe() -> None:  # DNS lookups ignore socket timeouts, hence the thread
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result[0] = None
        except OSError as exc:
            result[0] = f"{host}: {exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0]
