"""A real HTTP server on 127.0.0.1 for download tests: serves a folder, with Range and faults.

    with FileServer(folder, delay=0.2) as server:   # delay: seconds before each answer
        server.fail("/a.zip", times=2)          # next 2 GETs of /a.zip answer 503
        server.cut("/a.zip", after=1000)        # next GET sends 1000 body bytes, then hangs up
        server.replace("/a.zip", b"junk")       # serve these bytes instead of the file
        download_file(server.url + "/a.zip", ...)
        server.requests                          # what was asked: path, Range header, status

Faults are per path and used up in order: failures first, then cuts. Thread-safe.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Request:
    """One request as the server saw it, and how it answered."""

    path: str
    range: str | None
    status: int = 0


@dataclass
class _Faults:
    fail: list[int] = field(default_factory=list)  # statuses to answer, in order
    cut: list[int] = field(default_factory=list)  # body bytes to send before hanging up
    body: bytes | None = None


class FileServer:
    """Serve `root` over HTTP on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, root: str | Path, *, ranges: bool = True, delay: float = 0.0) -> None:
        self.root = Path(root)
        self.ranges = ranges  # False: ignore Range headers, like some servers do
        self.delay = delay  # a slow server: downloads stay in flight
        self.requests: list[Request] = []
        self._faults: dict[str, _Faults] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def fail(self, path: str, *, times: int = 1, status: int = 503) -> None:
        """Answer the next `times` GETs of path with `status` (no body)."""
        with self._lock:
            self._faults.setdefault(path, _Faults()).fail.extend([status] * times)

    def cut(self, path: str, *, after: int, times: int = 1) -> None:
        """For the next `times` GETs of path, send `after` body bytes then drop the connection."""
        with self._lock:
            self._faults.setdefault(path, _Faults()).cut.extend([after] * times)

    def replace(self, path: str, body: bytes) -> None:
        """Serve `body` for path from now on, whatever the file holds (wrong bytes)."""
        with self._lock:
            self._faults.setdefault(path, _Faults()).body = body

    def requests_for(self, path: str) -> list[Request]:
        """The requests made for path, in order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _take_fault(self, path: str) -> tuple[int | None, int | None, bytes | None]:
        """(status to fail with, bytes to cut after, replacement body) for this request."""
        with self._lock:
            faults = self._faults.get(path)
            if faults is None:
                return None, None, None
            if faults.fail:
                return faults.fail.pop(0), None, faults.body
            return None, (faults.cut.pop(0) if faults.cut else None), faults.body

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _handler_for(server: FileServer) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `server` (its folder, faults and request log)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

        def do_GET(self) -> None:
            time.sleep(server.delay)
            path = unquote(urlsplit(self.path).path)
            request = Request(path, self.headers.get("Range"))
            server._record(request)
            status, cut, body = server._take_fault(path)
            if status is not None:
                request.status = status
                self._reply(status, b"")
                return
            if body is None:
                file = (server.root / path.lstrip("/")).resolve()
                if not file.is_relative_to(server.root.resolve()) or not file.is_file():
                    request.status = 404
                    self._reply(404, b"not found")
                    return
                body = file.read_bytes()
            self._send_body(request, body, cut)

        def _send_body(self, request: Request, body: bytes, cut: int | None) -> None:
            """200 or 206 (honouring a Range header), 416 past the end; maybe hang up early."""
            size, start, end = len(body), 0, len(body) - 1
            match = _RANGE.match(request.range or "") if server.ranges else None
            headers = {}
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                if start >= size:
                    request.status = 416
                    self._reply(416, b"", {"Content-Range": f"bytes */{size}"})
                    return
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            request.status = 206 if match else 200
            payload = body[start : end + 1]
            if cut is not None:
                self._reply(request.status, payload[:cut], headers, length=len(payload))
                self.close_connection = True
                return
            self._reply(request.status, payload, headers)

        def _reply(
            self,
            status: int,
            payload: bytes,
            headers: dict[str, str] | None = None,
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
            self.send_header("Content-Length", str(len(payload) if length is None else length))
            self.end_headers()
            try:
                self.wfile.write(payload)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler


@contextmanager
def slow_folder_server(folder: Path, delay: float) -> Iterator[tuple[str, Path]]:
    """(base url, folder) of a server taking `delay` seconds per file over a new empty folder."""
    folder.mkdir()
    with FileServer(folder, delay=delay) as server:
        yield server.url, folder
