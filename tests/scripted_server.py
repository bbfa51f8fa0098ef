"""A scripted HTTP server on 127.0.0.1 for tests: planners (decomposers, OpenAI-compatible
servers) that the code under test, or the operator subprocess, calls for real.

Importable from every test directory: tests/conftest.py puts tests/ on sys.path.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list: JSON; str: sent as it is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


class Server:
    """ThreadingHTTPServer answering POSTs from a script (a list, the last reply repeats) or a function."""

    def __init__(self, script: list[Reply] | Callable[[Seen], Reply]) -> None:
        self.script = script
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = server.next(seen)
                if reply.delay:
                    time.sleep(reply.delay)
                data = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                payload = data.encode()
                try:
                    self.send_response(reply.status)
                    ctype = "application/json" if not isinstance(reply.body, str) else "text/html"
                    self.send_header("Content-Type", reply.headers.get("Content-Type", ctype))
                    for k, v in reply.headers.items():
                        if k != "Content-Type":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def next(self, seen: Seen) -> Reply:
        with self.lock:
            self.requests.append(seen)
            if callable(self.script):
                return self.script(seen)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
