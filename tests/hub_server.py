"""A stand-in for the Hugging Face Hub on 127.0.0.1: one model repository, served in the Hub's layout.

It answers what `huggingface_hub.snapshot_download` asks (`HF_ENDPOINT` points the client at it):

    GET  /api/models/{repo}/revision/{revision}    the repository's commit and file list (JSON)
    GET  /api/models/{repo}/tree/{commit}          the files at that commit (JSON)
    HEAD /{repo}/resolve/{revision}/{file}          the file's commit, ETag and size
    GET  /{repo}/resolve/{revision}/{file}          the file, with Range support for resumed downloads

`fault` makes it misbehave the way real endpoints do: "stall" accepts every connection and never answers,
"404" and "500" answer every request with that status, "drop" sends half of each file's bytes and closes
the connection (`drops` times, then it serves files whole). The server is started and stopped by the test
that uses it (a context manager), so nothing outlives the test.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, repo_id: str, files_dir: Path, fault: str | None = None, drops: int = 1):
        self.repo_id = repo_id
        self.files = {p.name: p.read_bytes() for p in sorted(Path(files_dir).iterdir()) if p.is_file()}
        self.fault = fault
        self.drops_left = drops
        self.requests: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()  # releases stalled handlers
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def take_drop(self) -> bool:
        with self.lock:
            if self.drops_left > 0:
                self.drops_left -= 1
                return True
            return False


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest() + '"'


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            if hub.fault == "stall":
                hub.stop.wait()
                return
            if hub.fault in ("404", "500"):
                self._json(int(hub.fault), {"error": f"status {hub.fault} from the test server"})
                return
            api = f"/api/models/{hub.repo_id}/"
            resolve = f"/{hub.repo_id}/resolve/"
            if path.startswith(api + "revision/"):
                siblings = [{"rfilename": name, "size": len(data)} for name, data in hub.files.items()]
                self._json(200, {"id": hub.repo_id, "modelId": hub.repo_id, "sha": COMMIT, "siblings": siblings})
            elif path == api + f"tree/{COMMIT}":
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in hub.files.items()
                ]
                self._json(200, entries)
            elif path.startswith(resolve) and path[len(resolve) :].split("/", 1)[-1] in hub.files:
                self._file(hub.files[path[len(resolve) :].split("/", 1)[1]], head)
            else:
                self._json(404, {"error": "not found"}, error_code="EntryNotFound")

        def _json(self, status: int, body: dict | list, error_code: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
            self.end_headers()
            self.wfile.write(data)

        def _file(self, data: bytes, head: bool) -> None:
            start = 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][len("bytes=") :].split("-")[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", _etag(data))
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            if hub.fault == "drop" and len(body) > 1 and hub.take_drop():
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler
