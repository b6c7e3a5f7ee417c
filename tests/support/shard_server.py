"""A real HTTP server on 127.0.0.1 serving a shard directory, with faults to inject: answers 503
a number of times, a connection cut after N bytes, a 404, bytes that differ from the manifest,
range requests on or off. It counts the requests per file (and the Range headers it saw), so a
test can tell a retry and a resumed read from a whole re-read."""

from __future__ import annotations

import collections
import contextlib
import http.server
import re
import threading
from pathlib import Path
from typing import Iterator


class Faults:
    def __init__(self) -> None:
        self.ranges = True                                   # honour Range requests (206)
        self.unavailable: dict[str, int] = {}                # name -> 503 answers left
        self.cut_after: dict[str, int] = {}                  # name -> bytes sent before the cut (once)
        self.missing: set[str] = set()                       # name -> 404
        self.replaced: dict[str, bytes] = {}                 # name -> other bytes served
        self.requests: collections.Counter[str] = collections.Counter()
        self.range_headers: list[tuple[str, str]] = []
        self.sent: collections.Counter[str] = collections.Counter()  # body bytes written per file
        self.lock = threading.Lock()


def _handler(root: Path, prefix: str, faults: Faults) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if not path.startswith(prefix):
                return self._status(404)
            name = path[len(prefix):].lstrip("/")
            with faults.lock:
                faults.requests[name] += 1
                if self.headers.get("Range"):
                    faults.range_headers.append((name, self.headers["Range"]))
                if faults.unavailable.get(name, 0) > 0:
                    faults.unavailable[name] -= 1
                    return self._status(503)
                cut = faults.cut_after.pop(name, None)
            file = root / name
            if name in faults.missing or not file.is_file():
                return self._status(404)
            data = faults.replaced.get(name) or file.read_bytes()
            start, status = self._range_start(len(data))
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes" if faults.ranges else "none")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            if cut is not None:  # the connection drops mid-file
                body, self.close_connection = body[:cut], True
            with faults.lock:  # counted before the write: the client may be done before it returns
                faults.sent[name] += len(body)
            self.wfile.write(body)
            self.wfile.flush()

        def _range_start(self, size: int) -> tuple[int, int]:
            match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if faults.ranges and match and int(match.group(1)) < size:
                return int(match.group(1)), 206
            return 0, 200

        def _status(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextlib.contextmanager
def serve(root: Path, prefix: str = "/shards") -> Iterator[tuple[str, Faults]]:
    """(base URL of `root`, its Faults) while the server runs in a thread."""
    faults = Faults()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(Path(root), prefix, faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{prefix}/", faults
    finally:
        server.shutdown()
        server.server_close()
