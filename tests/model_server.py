"""A local HTTP server for model exports, as a blob store answers: `Range` requests (206),
and on demand a first answer cut short, to test resumed downloads. Standard library only."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def export_zip(folder: Path) -> bytes:
    """A Custom Vision-style export zip of a model folder (its files at the top)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                bundle.write(path, path.name)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelServer:
    """Files by path; `cut[path] = n` sends only n bytes of the next full answer;
    `redirects[path]` answers 302 to that location; `lengths[path]` is the Content-Length
    sent instead of the true one; `held` is set while an answer waits for `release`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ranges: list[str] = []
        self.redirects: dict[str, str] = {}
        self.lengths: dict[str, str] = {}
        self.hold: set[str] = set()
        self.held = threading.Event()
        self.release = threading.Event()
        self.requested: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]  # a SAS token's query is not the file's name
                server.requested.append(path)
                if path in server.hold:
                    server.held.set()
                    server.release.wait(30)
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                wanted = self.headers.get("Range")
                if wanted:
                    server.ranges.append(wanted)
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", server.lengths.get(path, str(len(body))))
                self.end_headers()
                cut = server.cut.pop(path, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def add(self, path: str, data: bytes) -> tuple[str, str]:
        """Serve `data` at `path`; (its URL, its SHA-256)."""
        self.files[path] = data
        return self.url + path, sha256(data)


@contextmanager
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    thread = threading.Thread(target=server.http.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.http.shutdown()
        server.http.server_close()
