"""A threaded HTTP server on 127.0.0.1 with fault injection, for download tests.

``server.files[path] = bytes`` publishes a file; ``server.faults[path] = [...]`` queues one fault per
request ("500", "404", "truncate": full Content-Length, half the body, then the connection closes;
"norange": answer 200 with the whole file even to a Range request); requests after the queue is empty
are served normally, with HTTP Range support (206 + Content-Range). ``server.requests`` logs
(path, Range header) of every request.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "FaultServer"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        queue = srv.faults.get(self.path, [])
        fault = queue.pop(0) if queue else None
        body = srv.files.get(self.path)
        if fault in ("500", "404") or body is None:
            self.send_error(404 if fault == "404" or body is None else 500)
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and fault != "norange":
            start = int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault == "truncate":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
