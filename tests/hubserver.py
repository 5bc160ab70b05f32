"""A loopback fake of the Hugging Face hub, speaking the protocol huggingface_hub 2.x uses.

Endpoints (what ``HfApi.model_info`` and ``hf_hub_download`` call):

- ``GET /api/models/{org}/{name}[/revision/{rev}]`` (``?blobs=True``): repo info with ``sha``,
  ``siblings`` (sizes, blob ids, LFS info), ``gated``, optional ``safetensors`` totals.
- ``HEAD|GET /{org}/{name}/resolve/{rev}/{path}``: small files answered directly with ``ETag``,
  ``X-Repo-Commit`` and ``Content-Length``; LFS files (weights) answered ``302`` to a second
  "CDN" server (another origin, so the client stops there and reads ``X-Linked-Etag`` /
  ``X-Linked-Size`` off the redirect, as with the real hub).
- ``GET /cdn/{sha256}`` on the CDN origin: the bytes, with ``Range`` support (``206``), and an
  optional one-time drop of the connection half-way through a file (``drop_once``) or one-time
  ``500`` (``fail_once``).
- ``corrupt``: file names served with one byte changed (same size), on the CDN and the resolve
  URL alike, while the API keeps listing the true sha256 / blob id: a damaged download.
- Errors as the hub sends them: ``404`` + ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound``
  / ``EntryNotFound``; gated repos ``401``/``403`` + ``X-Error-Code: GatedRepo`` on downloads.

Every request is recorded (method, path, headers) so tests can assert on what the client sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".model")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    origin: str  # "hub" or "cdn"


@dataclass
class FakeRepo:
    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens granted access (gated repos)
    params: int | None = None  # safetensors total reported by the API


def _is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def damaged(data: bytes) -> bytes:
    """The same bytes with the middle one changed: the size still matches."""
    if not data:
        return data
    mid = len(data) // 2
    return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]


def folder_files(folder: Path) -> dict[str, bytes]:
    """All files of a folder, by posix relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class FakeHub:
    """Start with ``with FakeHub() as hub:``; ``hub.endpoint`` goes into HF_ENDPOINT."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes (the CDN)
        self.requests: list[Recorded] = []
        self.drop_once: set[str] = set()  # file names whose first CDN GET is cut half-way
        self.fail_once: set[str] = set()  # file names whose first CDN GET answers 500
        self.corrupt: set[str] = set()  # file names served damaged (one byte changed)
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.endpoint = ""
        self.cdn = ""

    # ---------------------------------------------------------------- set-up

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | Path,
        *,
        revision: str = "main",
        gated: bool = False,
        tokens: tuple[str, ...] = (),
        params: int | None = None,
    ) -> str:
        """Add (or add a commit to) a repo; ``revision`` (branch or tag) points at it. Returns the sha."""
        content = folder_files(files) if isinstance(files, Path) else dict(files)
        repo = self.repos.setdefault(repo_id, FakeRepo(repo_id))
        repo.gated = repo.gated or gated
        repo.tokens.update(tokens)
        if params is not None:
            repo.params = params
        h = hashlib.sha1(repo_id.encode() + revision.encode())
        for name in sorted(content):
            h.update(name.encode() + b"\0" + content[name])
        sha = h.hexdigest()
        repo.commits[sha] = content
        repo.refs[revision] = sha
        for data in content.values():
            self.blobs[_sha256(data)] = data
        return sha

    def find(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and contains in r.path
            ]

    # ---------------------------------------------------------------- server

    def __enter__(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.hub = self  # type: ignore[attr-defined]
            server.role = role  # type: ignore[attr-defined]
            url = f"http://127.0.0.1:{server.server_address[1]}"
            if role == "hub":
                self.endpoint = url
            else:
                self.cdn = url
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    # ---------------------------------------------------------------- protocol

    def resolve_rev(self, repo: FakeRepo, rev: str) -> str | None:
        if rev in repo.refs:
            return repo.refs[rev]
        return rev if rev in repo.commits else None

    def model_info(self, repo: FakeRepo, sha: str) -> dict[str, Any]:
        siblings = []
        for name, data in sorted(repo.commits[sha].items()):
            entry: dict[str, Any] = {
                "rfilename": name,
                "size": len(data),
                "blobId": _git_blob_sha(data),
            }
            if _is_lfs(name):
                entry["lfs"] = {"size": len(data), "sha256": _sha256(data), "pointerSize": 134}
            siblings.append(entry)
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "private": False,
            "disabled": False,
            "gated": "manual" if repo.gated else False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "siblings": siblings,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
        }
        if repo.params:
            info["safetensors"] = {"parameters": {"F32": repo.params}, "total": repo.params}
        return info


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet tests

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[no-any-return]

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(head=False)

    # ------------------------------------------------------------ helpers

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, head: bool) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            body,
            {
                "Content-Type": "application/json",
                "X-Error-Code": code,
                "X-Error-Message": message,
            },
            head,
        )

    def _dispatch(self, head: bool) -> None:
        path = urlsplit(self.path).path
        with self.hub._lock:
            self.hub.requests.append(
                Recorded(self.command, path, dict(self.headers.items()), self.server.role)
            )
        if self.server.role == "cdn":
            self._cdn(path, head)
            return
        parts = path.split("/")
        if len(parts) >= 5 and parts[1] == "api" and parts[2] == "models":
            self._api(parts[3:], head)
        elif len(parts) >= 6 and parts[3] == "resolve":
            self._resolve(parts, head)
        else:
            self._error(404, "NotFound", f"no route {path}", head)

    def _repo(self, repo_id: str, head: bool) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head)
        return repo

    def _api(self, parts: list[str], head: bool) -> None:
        repo = self._repo(unquote(parts[0]) + "/" + unquote(parts[1]), head)
        if repo is None:
            return
        rest = parts[2:]
        rev = unquote(rest[1]) if len(rest) >= 2 and rest[0] == "revision" else "main"
        sha = self.hub.resolve_rev(repo, rev)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return
        body = json.dumps(self.hub.model_info(repo, sha)).encode()
        self._send(200, body, {"Content-Type": "application/json"}, head)

    def _resolve(self, parts: list[str], head: bool) -> None:
        repo = self._repo(unquote(parts[1]) + "/" + unquote(parts[2]), head)
        if repo is None:
            return
        rev = unquote(parts[4])
        filename = unquote("/".join(parts[5:]))
        sha = self.hub.resolve_rev(repo, rev)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return
        if repo.gated:
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ").strip() if auth else ""
            if not token:
                self._error(
                    401,
                    "GatedRepo",
                    "Access to model is restricted. You must have access to it and be authenticated to access it. Please log in.",
                    head,
                )
                return
            if token not in repo.tokens:
                self._error(
                    403,
                    "GatedRepo",
                    "Access to model is restricted and you are not in the authorized list.",
                    head,
                )
                return
        data = repo.commits[sha].get(filename)
        if data is None:
            self._send(
                404,
                b"Entry not found",
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
                head,
            )
            return
        common = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if _is_lfs(filename):
            digest = _sha256(data)
            self._send(
                302,
                b"",
                {
                    **common,
                    "Location": f"{self.hub.cdn}/cdn/{digest}?name={filename}",
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{_git_blob_sha(data)}"',
                },
                head,
            )
            return
        etag = _git_blob_sha(data)
        if filename in self.hub.corrupt:
            data = damaged(data)
        self._send(200, data, {**common, "ETag": f'"{etag}"', "Content-Type": "text/plain"}, head)

    def _cdn(self, path: str, head: bool) -> None:
        digest = path.rsplit("/", 1)[-1]
        data = self.hub.blobs.get(digest)
        if data is None:
            self._send(404, b"no such blob", head=head)
            return
        name = unquote(urlsplit(self.path).query.partition("name=")[2])
        if name in self.hub.corrupt:
            data = damaged(data)
        rng = self.headers.get("Range")
        start = 0
        end = len(data) - 1
        status = 200
        headers = {"ETag": f'"{digest}"', "Accept-Ranges": "bytes"}
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes=") :].partition("-")
            start = int(first or 0)
            end = int(last) if last else len(data) - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        chunk = data[start : end + 1]
        drop = False
        with self.hub._lock:
            fail = not head and name in self.hub.fail_once
            self.hub.fail_once.discard(name)
        if fail:
            self._send(500, b"internal error", head=head)
            return
        with self.hub._lock:
            if not head and name in self.hub.drop_once and start == 0:
                self.hub.drop_once.discard(name)
                drop = True
        if not drop:
            self._send(status, chunk, headers, head)
            return
        # announce the whole body, send half of it, then hang up: a broken download
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk[: len(chunk) // 2])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
