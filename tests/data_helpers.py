"""Shared by the data-set tests: an isolated data environment and a loopback HTTP mirror."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from xpcnn.datasets import sources


def isolate_data_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's ``$XPCNN_DATA`` or cache, or goes through a proxy."""
    monkeypatch.delenv(sources.DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


class Mirror:
    """A tiny HTTP server on 127.0.0.1 serving ``routes[path] -> bytes``; records the paths hit."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.hits: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                mirror.hits.append(self.path)
                body = mirror.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def serve_dir(self, prefix: str, directory: Path) -> str:
        for p in directory.iterdir():
            self.routes[f"/{prefix}/{p.name}"] = p.read_bytes()
        return f"{self.url}/{prefix}/"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
