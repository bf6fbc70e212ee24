"""Example app for the sidecar overlay: it uses the proxy the way any OpenAI client does.

The proxy runs in the same pod and listens on 127.0.0.1:8000 only, so this app reaches it at
OPENAI_BASE_URL=http://127.0.0.1:8000/v1 and nothing outside the pod can. Endpoints:

  GET /         one chat completion through the proxy (model EXAMPLE_MODEL), its JSON answer
  GET /healthz  this app's own liveness

Standard library only, so that it runs on the proxy's image; a real app would use an OpenAI SDK,
which reads OPENAI_BASE_URL and OPENAI_API_KEY by itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE_URL = os.environ["OPENAI_BASE_URL"]
API_KEY = os.environ.get("OPENAI_API_KEY", "unused")
MODEL = os.environ.get("EXAMPLE_MODEL", "e2ee-glm-5-1")
PORT = int(os.environ.get("PORT", "8080"))
# No HTTP(S)_PROXY detour: the proxy is on this pod's loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ask(prompt: str) -> tuple[int, bytes]:
    """One chat completion through the proxy: its status and body."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})
    request = urllib.request.Request(  # noqa: S310 - the configured http:// base URL
        BASE_URL + "/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    try:
        with OPENER.open(request, timeout=120) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:  # an OpenAI error body from the proxy
        return exc.code, exc.read()
    except OSError as exc:  # the proxy is not reachable
        return 502, json.dumps({"error": {"message": f"proxy unreachable: {exc}"}}).encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            status, payload = 200, b'{"status": "ok"}'
        elif self.path == "/":
            status, payload = ask("Hello from the example app!")
        else:
            status, payload = 404, b'{"error": {"message": "not found"}}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    # As PID 1 the process would ignore SIGTERM without a handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)  # noqa: S104 - the pod's app port
    print(f"example app on :{PORT}, OpenAI base URL {BASE_URL}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
