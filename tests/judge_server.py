"""A scripted OpenAI-compatible chat-completions server for the judge tests.

Loopback only (127.0.0.1, a free port), one thread per request, bounded: it answers at most
``max_requests`` requests and shuts itself down after ``max_seconds``.

By default it behaves like an honest judge with a rule the tests can recompute independently
(:func:`reference_verdict`). A ``script(question, n)`` callable — ``n`` counts the requests seen
for that question, from 1 — can return an :class:`Action` instead, to misbehave on purpose.
"""
from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVED_MODEL = "fake-judge-2024-01-01"


def _norm(s: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", s.lower()))


def reference_verdict(answer: str, pred: str) -> tuple[str, int]:
    """yes iff the normalised answer occurs in the normalised prediction; score 5 for an exact
    match, 3 for containment, 1 otherwise."""
    a, p = _norm(answer), _norm(pred)
    if a == p:
        return "yes", 5
    if a and f" {a} " in f" {p} ":
        return "yes", 3
    return "no", 1


@dataclass
class Action:
    """What to do with one request: ``reply`` (a text body), ``status`` (an HTTP error code),
    ``sleep`` (seconds before acting), ``drop`` (close the connection without answering),
    ``redirect`` (answer ``status`` (default 302) with this ``Location``), ``trickle`` (send the
    reply one byte every ``trickle`` seconds), ``body`` (the raw body of an error status)."""

    reply: str | None = None
    status: int | None = None
    sleep: float = 0.0
    drop: bool = False
    redirect: str | None = None
    trickle: float = 0.0
    body: str | None = None


def _parse_user(content: str) -> dict:
    out = {}
    for key, name in (("question", "Question"), ("answer", "Correct Answer"),
                      ("pred", "Predicted Answer")):
        m = re.search(rf"^{name}: (.*)$", content, re.MULTILINE)
        out[key] = m.group(1) if m else None
    return out


class JudgeServer:
    def __init__(self, script=None, *, max_requests: int = 400, max_seconds: float = 30.0,
                 die_after: int | None = None):
        self.script = script
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.die_after = die_after  # stop serving after this many answered requests
        self.requests: list[dict] = []  # parsed bodies, in arrival order
        self.headers: list[dict] = []
        self.get_headers: list[dict] = []  # headers of GET requests (a client following a redirect)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                server._handle(self)

            def do_GET(self):  # where a client that follows a 302 ends up: record, answer "yes"
                with server._lock:
                    server.get_headers.append(dict(self.headers))
                server._send(self, 200, {"object": "chat.completion", "model": "intruder", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "{'pred': 'yes', 'score': 5}"}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(max_seconds, self.stop)
        self._timer.daemon = True
        self._stopped = False  # no more requests are served
        self._shut = False  # the shutdown has begun

    # -- lifecycle
    def start(self) -> "JudgeServer":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._stopped = self._shut = True
        self._timer.cancel()
        threading.Thread(target=self._shutdown, daemon=True).start()

    def _shutdown(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.join()

    # -- queries
    def asked(self) -> list[str]:
        """Questions of the requests received, in order."""
        return [_parse_user(r["messages"][1]["content"])["question"] for r in self.requests]

    # -- handling
    def _send(self, h, code: int, body: dict | str, *, headers: dict | None = None, trickle: float = 0.0) -> None:
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if not trickle:
            h.wfile.write(data)
            return
        deadline = time.monotonic() + self.max_seconds
        for i in range(len(data)):  # one byte at a time: each read succeeds, the whole never ends
            if self._shut or time.monotonic() > deadline:
                return
            h.wfile.write(data[i : i + 1])
            h.wfile.flush()
            time.sleep(trickle)

    def _handle(self, h) -> None:
        if h.path != "/v1/chat/completions":
            return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self._lock:
            if self._stopped:  # dying: behave like a dead server, record nothing
                h.close_connection = True
                h.connection.close()
                return
            if len(self.requests) >= self.max_requests:
                return self._send(h, 503, {"error": {"message": "request budget spent"}})
            self.requests.append(body)
            self.headers.append(dict(h.headers))
            fields = _parse_user(body["messages"][1]["content"])
            q = fields["question"]
            self._counts[q] = n = self._counts.get(q, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            answered = len(self.requests)
            dying = self.die_after is not None and answered >= self.die_after
            if dying:
                self._stopped = True
        try:
            action = self.script(q, n) if self.script else None
            if action is None:
                pred, score = reference_verdict(fields["answer"], fields["pred"])
                action = Action(reply=str({"pred": pred, "score": score}))
            if action.sleep:
                time.sleep(min(action.sleep, 5.0))
            if action.drop:
                h.close_connection = True
                h.connection.close()
                return
            if action.redirect:
                return self._send(h, action.status or 302, "", headers={"Location": action.redirect})
            if action.status:
                return self._send(h, action.status, action.body or {"error": {"message": "scripted failure"}})
            self._send(h, 200, {
                "id": f"chatcmpl-{answered}",
                "object": "chat.completion",
                "model": SERVED_MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": action.reply}}],
            }, trickle=action.trickle)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)
        finally:
            with self._lock:
                self.in_flight -= 1
            if dying:
                self.stop()
