"""A loopback stand-in for the part of the Hugging Face Hub API that ``push_to_hub`` uses.

``huggingface_hub.HfApi(endpoint=server.url)`` talks to it: ``POST /api/repos/create``,
``POST /api/validate-yaml``, ``POST /api/models/<repo>/preupload/<rev>`` (every file is answered
"regular", so it travels base64-encoded inside the commit instead of through LFS/Xet) and
``POST /api/models/<repo>/commit/<rev>`` (the ndjson commit: header + files). Files land in
``server.repos[repo_id][path] = bytes``; every request is recorded in ``server.requests``.
Binds 127.0.0.1 on a free port; use it as a context manager so it is stopped.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, token: str = "hf_loopback_token"):
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                hub._post(self)

            def do_GET(self):  # noqa: N802
                hub.requests.append(("GET", self.path))
                self._reply(404, {"error": "not served by the loopback hub"})

            do_HEAD = do_GET

            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _post(self, h) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        self.requests.append(("POST", h.path))
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return h._reply(401, {"error": "bad token"})
        if h.path == "/api/repos/create":
            d = json.loads(body)
            repo_id = f"{d['organization']}/{d['name']}" if d.get("organization") else d["name"]
            self.repos.setdefault(repo_id, {})
            return h._reply(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})
        if h.path == "/api/validate-yaml":
            return h._reply(200, {"warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/?]+)(\?.*)?", h.path)
        if not m or m.group(1) not in self.repos:
            return h._reply(404, {"error": f"unknown path {h.path}"})
        repo_id, kind = m.group(1), m.group(2)
        if kind == "preupload":
            files = json.loads(body)["files"]
            return h._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                            for f in files]})
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = {}
        for x in lines:
            if x["key"] == "file":
                assert x["value"]["encoding"] == "base64"
                files[x["value"]["path"]] = base64.b64decode(x["value"]["content"])
            elif x["key"] != "header":
                return h._reply(400, {"error": f"unsupported commit entry {x['key']}"})
        self.repos[repo_id].update(files)
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo": repo_id, "summary": header.get("summary"), "files": sorted(files), "oid": oid})
        return h._reply(200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                              "pullRequestUrl": None})

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
