"""A scripted OpenAI-compatible chat-completions server, for tests and for trying agents out.

    apwa-model-stub [--port 8765] [--script faults.json]     # or: make model-stub

Answers POST .../chat/completions deterministically, in the shape OpenAI's API has:
* with response_format json_schema, the smallest instance of the schema (required properties,
  one item per array (or minItems), the first enum value, "stub" for strings, 0 for numbers);
* with json_object, {"answer": "stub"}; otherwise the text "stub answer: " and the start of the
  last user message.
Token counts are the words (whitespace-separated) of the messages and of the answer, so a test
can compute them exactly.

A script is a JSON list of faults, one per request in order (then normal answers again):
  {"status": 429, "retryAfter": 1}   an error status (401, 500, ...), with Retry-After if given
  {"content": "not json"}            this text as the answer (malformed or schema-invalid JSON)
  {"size": 10000}                    a normal text answer padded to this many characters
  {"delay": 2}                       answer after this many seconds (slow)
  {"hang": true}                     never answer (until the server stops): a timeout
  {"body": "<html>"}                 HTTP 200 with this body: not a chat completion
  {"readFile": "path"}               ask for the read_file tool on this path
It binds to 127.0.0.1 unless --host says otherwise: it answers anyone, with no key check.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8765


@dataclass(frozen=True, slots=True)
class Seen:
    """A request the stub received, for tests: when (time.monotonic()), its body, its headers."""

    at: float
    body: Any
    headers: dict[str, str]


def instance(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """The smallest deterministic value that satisfies `schema` (the subset apwa.common.schema checks)."""
    root = root or schema
    if "$ref" in schema:
        return instance(root.get("$defs", {}).get(schema["$ref"].removeprefix("#/$defs/"), {}), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return instance(schema[key][0], root)
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: instance(props.get(name, {}), root) for name in schema.get("required") or []}
    if kind == "array":
        # One item where the schema allows it, so that a reduce over the answers has something to merge.
        n = max(schema.get("minItems", 0), min(1, schema.get("maxItems", 1)))
        return [instance(schema.get("items") or {}, root) for _ in range(n)]
    if kind == "string":
        return "stub".ljust(schema.get("minLength", 0), "-")
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return {"boolean": False, "null": None}.get(kind)


def words(messages: list[Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))


def normal_answer(body: dict[str, Any]) -> str:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return json.dumps(instance(fmt["json_schema"]["schema"]), sort_keys=True)
    if fmt.get("type") == "json_object":
        return '{"answer": "stub"}'
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    last = " ".join(str(users[-1].get("content") or "").split()[:8]) if users else ""
    return f"stub answer: {last}"


class ModelStub:
    """The server; a context manager in tests (`with ModelStub([...]) as stub: stub.url`)."""

    def __init__(self, script: list[dict[str, Any]] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.script = list(script or [])
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ModelStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_fault(self, seen: Seen) -> dict[str, Any]:
        with self.lock:
            self.requests.append(seen)
            return self.script.pop(0) if self.script else {}

    def reply(self, body: Any, fault: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request: the fault, or the normal answer."""
        if fault.get("hang"):
            self.stopping.wait()
        if fault.get("delay"):
            self.stopping.wait(float(fault["delay"]))
        if "status" in fault:
            headers = {"Retry-After": str(fault["retryAfter"])} if "retryAfter" in fault else {}
            error = {"error": {"message": f"stub fault: HTTP {fault['status']}", "type": "stub"}}
            return int(fault["status"]), headers, json.dumps(error).encode()
        if "body" in fault:
            return 200, {"Content-Type": "text/html"}, str(fault["body"]).encode()
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return 400, {}, json.dumps({"error": {"message": "not a chat completion request"}}).encode()
        return 200, {}, json.dumps(self.completion(body, fault)).encode()

    def completion(self, body: dict[str, Any], fault: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant"}
        finish = "stop"
        if "readFile" in fault:
            call = {"name": "read_file", "arguments": json.dumps({"path": fault["readFile"]})}
            message.update(
                content=None, tool_calls=[{"id": f"call-{len(self.requests)}", "type": "function", "function": call}]
            )
            finish = "tool_calls"
            content = ""
        else:
            content = str(fault["content"]) if "content" in fault else normal_answer(body)
            if "size" in fault:
                content = content.ljust(int(fault["size"]), ".")
            message["content"] = content
        prompt, completion = words(body["messages"]), len(content.split())
        return {
            "id": f"stub-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model") or "stub",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }


def _handler(stub: ModelStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = None
            seen = Seen(time.monotonic(), body, {k.lower(): v for k, v in self.headers.items()})
            fault = stub.next_fault(seen)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                status, headers, data = 404, {}, b'{"error": {"message": "only /v1/chat/completions"}}'
            else:
                status, headers, data = stub.reply(body, fault)
            self._send(status, headers, data)

        def do_GET(self) -> None:
            models = {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "apwa"}]}
            self._send(200, {}, json.dumps(models).encode())

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout under test): nothing to tell it

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="apwa-model-stub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--script", help="JSON file: a list of faults, one per request (module docstring)")
    args = parser.parse_args(argv)
    script = json.loads(Path(args.script).read_text()) if args.script else []
    with ModelStub(script, args.host, args.port) as stub:
        print(
            f"apwa-model-stub: {stub.url} (OpenAI-compatible; any model name and API key)", file=sys.stderr, flush=True
        )
        try:
            stub.thread.join()
        except KeyboardInterrupt:
            pass
