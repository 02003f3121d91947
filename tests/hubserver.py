"""A small Hugging Face Hub look-alike on 127.0.0.1 for offline download/push tests.

Implements only what huggingface_hub 1.x calls for snapshot_download / hf_hub_download / ranged header reads /
create_repo / create_branch / upload_folder (legacy LFS path: run clients with HF_HUB_DISABLE_XET=1):

  GET  /api/models/{repo}[/revision/{rev}]          repo info (id, sha, siblings, gated, private)
  GET  /api/models/{repo}/tree/{rev}[/{path}]        recursive tree listing (size, oid, lfs {oid,size})
  HEAD|GET /{repo}/resolve/{rev}/{path}              ETag / X-Repo-Commit / X-Linked-Etag / X-Linked-Size, Range
  POST /api/repos/create                             create (409 + url when it exists)
  POST /api/models/{repo}/branch/{branch}            create a branch from main
  POST /api/validate-yaml                            parses the README front matter
  POST /api/models/{repo}/preupload/{rev}            upload modes (lfs for weights / binaries)
  POST /{repo}.git/info/lfs/objects/batch            LFS batch: basic PUT to /lfs-upload/{oid}
  PUT  /lfs-upload/{oid}                             stores the object after checking its sha256
  POST /api/models/{repo}/commit/{rev}               ndjson commit (header/file/lfsFile/deletedFile), create_pr

Auth mirrors the Hub: gated repos answer 401 (no token) or 403 (token without access) with X-Error-Code
GatedRepo; private or missing repos answer 401/404 RepoNotFound; writes need a token in `write_tokens`.
Faults (`add_fault`) make the next N matching requests answer 500, drop the connection half-way through the
body, or serve corrupted bytes with the right headers. Every request is logged (method, path, Range) and every
commit recorded (files and their bytes), so tests can assert what was fetched and what was pushed.

The server binds 127.0.0.1 only, runs in a daemon thread, and stops by itself after `lifetime` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN_SIZE = 1 << 20
_REPO = r"(?P<repo>[^/]+/[^/]+)"


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    data: bytes
    lfs: bool
    xet_hash: str | None = None

    @property
    def sha256(self) -> str:
        return sha256(self.data)

    @property
    def oid(self) -> str:
        if not self.lfs:
            return git_oid(self.data)
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n"
        return git_oid(pointer.encode())

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid

    def tree(self, path: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": "file", "path": path, "size": len(self.data), "oid": self.oid}
        if self.lfs:
            doc["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": 134}
        if self.xet_hash:
            doc["xetHash"] = self.xet_hash
        return doc


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    allowed_tokens: set[str] = field(default_factory=set)
    branches: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, dict[str, Entry]] = field(default_factory=dict)
    prs: int = 0


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    kind: str  # "500" | "drop" | "corrupt" | "401" | "403"
    times: int


def _default_lfs(path: str, data: bytes) -> bool:
    return path.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")) or len(data) >= LFS_MIN_SIZE


class FakeHub:
    def __init__(self, *, write_tokens: tuple[str, ...] = ("hf_writer_token",), lifetime: float = 300.0):
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.write_tokens = set(write_tokens)
        self.faults: list[Fault] = []
        self.requests: list[dict[str, Any]] = []
        self.commits: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self._counter = 0
        self._lifetime = lifetime
        self._server: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------------------------------ set-up

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self._timer = threading.Timer(self._lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _new_sha(self, seed: str) -> str:
        with self.lock:
            self._counter += 1
            return hashlib.sha1(f"{seed}:{self._counter}".encode()).hexdigest()  # noqa: S324

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False, gated: bool = False,
                 allowed_tokens: tuple[str, ...] = (), lfs: Any = _default_lfs,
                 xet_hashes: dict[str, str] | None = None) -> str:
        """Create a repo whose main branch holds `files`; returns the commit sha.

        `lfs(path, data)` says which files are LFS (sha256 published); `xet_hashes` adds a Xet hash to the tree
        listing of those paths (a non-LFS path with a Xet hash is a Xet-only file).
        """
        xet_hashes = xet_hashes or {}
        with self.lock:
            repo = Repo(repo_id, private=private, gated=gated, allowed_tokens=set(allowed_tokens))
            sha = self._new_sha(repo_id)
            repo.snapshots[sha] = {p: Entry(d, bool(lfs(p, d)), xet_hashes.get(p)) for p, d in files.items()}
            repo.branches["main"] = sha
            self.repos[repo_id] = repo
            return sha

    def add_fault(self, method: str, path_regex: str, kind: str, times: int = 1) -> None:
        with self.lock:
            self.faults.append(Fault(method.upper(), re.compile(path_regex), kind, times))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        sha = repo.branches.get(revision, revision)
        return {p: e.data for p, e in repo.snapshots[sha].items()}

    def fetched(self, method: str = "GET") -> list[str]:
        """Paths of /resolve/ requests seen (decoded), e.g. to assert a shard was never downloaded."""
        return [r["file"] for r in self.requests if r["method"] == method and r.get("file")]

    def take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and f.method == method and f.pattern.search(path):
                    f.times -= 1
                    return f.kind
        return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # ----------------------------------------------------------------------------------------- helpers

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict[str, str] | None = None,
              *, head: bool = False) -> None:
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
        self.send_response(status)
        hdrs = {"Content-Type": "application/json" if not isinstance(body, bytes) else "application/octet-stream",
                **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        if "Content-Length" not in hdrs:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head and data:
            self.wfile.write(data)

    def _error(self, status: int, code: str | None = None, message: str = "", extra: dict[str, str] | None = None,
               *, head: bool = False) -> None:
        headers = {**({"X-Error-Code": code} if code else {}), **({"X-Error-Message": message} if message else {}),
                   **(extra or {})}
        self._send(status, {"error": message or code or "error"}, headers, head=head)

    def _repo_for_read(self, repo_id: str, *, head: bool = False) -> Repo | None:
        """The repo, or None after answering the error the Hub would give this caller."""
        token = self._token()
        repo = self.fake.repos.get(repo_id)
        if repo is None or (repo.private and token not in repo.allowed_tokens | self.fake.write_tokens):
            self._error(404 if token else 401, "RepoNotFound", "Repository not found", head=head)
            return None
        if repo.gated and token not in repo.allowed_tokens:
            self._error(403 if token else 401, "GatedRepo",
                        "Access to model is restricted. You must have access to it and be authenticated.", head=head)
            return None
        return repo

    def _commit_for(self, repo: Repo, rev: str, *, head: bool = False) -> str | None:
        sha = repo.branches.get(rev) or (rev if rev in repo.snapshots else None)
        if sha is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev, head=head)
        return sha

    def _writer(self) -> bool:
        token = self._token()
        if token in self.fake.write_tokens:
            return True
        if token is None:
            self._error(401, None, "Invalid username or password.")
        else:
            self._error(403, None, "You don't have the rights to create a model under this namespace")
        return False

    # ---------------------------------------------------------------------------------------- dispatch

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        raw, query = parts.path, parse_qs(parts.query)
        record: dict[str, Any] = {"method": method, "path": unquote(raw), "range": self.headers.get("Range")}
        m = re.fullmatch(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", raw)
        if m:
            record["file"] = unquote(m["file"])
        with self.fake.lock:
            self.fake.requests.append(record)
        fault = self.fake.take_fault(method, unquote(raw))
        if fault in ("500", "401", "403"):
            body = self._body() if method in ("POST", "PUT") else b""
            del body
            code = {"401": "GatedRepo", "403": "GatedRepo"}.get(fault)
            self._error(int(fault), code, "injected fault", head=method == "HEAD")
            return
        routes = [
            ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", self.repo_info),
            ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self.tree),
            ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
            ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", rf"/api/models/{_REPO}/branch/(?P<branch>[^/]+)", self.create_branch),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", self.preupload),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self.lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", self.lfs_put),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", self.commit),
        ]
        for verb, pattern, fn in routes:
            m = re.fullmatch(pattern, raw)
            if verb == method and m:
                args = {k: unquote(v) if v is not None else None for k, v in m.groupdict().items()}
                fn(query=query, fault=fault, **args)
                return
        self._error(404, None, f"no route for {method} {raw}", head=method == "HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    # -------------------------------------------------------------------------------------------- read

    def repo_info(self, repo: str, rev: str | None, query: dict, fault: str | None) -> None:
        r = self._repo_for_read(repo)
        if r is None:
            return
        sha = self._commit_for(r, rev or "main")
        if sha is None:
            return
        snap = r.snapshots[sha]
        siblings = [{"rfilename": p} for p in sorted(snap)]
        if query.get("blobs"):
            siblings = [{"rfilename": p, "size": len(e.data), "blobId": e.oid,
                         **({"lfs": {"sha256": e.sha256, "size": len(e.data), "pointerSize": 134}} if e.lfs else {})}
                        for p, e in sorted(snap.items())]
        self._send(200, {"id": repo, "modelId": repo, "sha": sha, "private": r.private,
                         "gated": "manual" if r.gated else False, "disabled": False, "siblings": siblings,
                         "tags": [], "lastModified": "2025-04-05T00:00:00.000Z"})

    def tree(self, repo: str, rev: str, sub: str | None, query: dict, fault: str | None) -> None:
        r = self._repo_for_read(repo)
        if r is None:
            return
        sha = self._commit_for(r, rev)
        if sha is None:
            return
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        prefix = (sub.strip("/") + "/") if sub else ""
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path, e in sorted(r.snapshots[sha].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                for i, _ in enumerate(rest.split("/")[:-1]):
                    dirs.add(prefix + "/".join(rest.split("/")[: i + 1]))
            out.append(e.tree(path))
        out = [{"type": "directory", "path": d, "oid": git_oid(d.encode()), "size": 0} for d in sorted(dirs)] + out
        self._send(200, out)

    def resolve(self, repo: str, rev: str, file: str, query: dict, fault: str | None) -> None:
        head = self.command == "HEAD"
        r = self._repo_for_read(repo, head=head)
        if r is None:
            return
        sha = self._commit_for(r, rev, head=head)
        if sha is None:
            return
        entry = r.snapshots[sha].get(file)
        if entry is None:
            self._error(404, "EntryNotFound", f"{file} does not exist", {"X-Repo-Commit": sha}, head=head)
            return
        data = entry.data
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.etag}"', "X-Linked-Size": str(len(data))})
        if head:
            self._send(200, b"", {**headers, "Content-Length": str(len(data))}, head=True)
            return
        if fault == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:-1] + bytes([data[-1] ^ 0x55]) if len(data) > 1 \
                else bytes([data[0] ^ 0xFF])
        status, start, end = 200, 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (not m[1] and not m[2]):
                self._error(416, None, "bad range")
                return
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            else:
                start, end = max(0, len(data) - int(m[2])), len(data) - 1
            if start > end:
                self._error(416, None, "range not satisfiable", {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start:end + 1]
        if fault == "drop" and len(body) > 1:
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(status, body, headers)

    # ------------------------------------------------------------------------------------------- write

    def create_repo(self, query: dict, fault: str | None) -> None:
        payload = json.loads(self._body() or b"{}")
        if not self._writer():
            return
        repo_id = f"{payload.get('organization')}/{payload['name']}" if payload.get("organization") \
            else f"user/{payload['name']}"
        url = f"{self.fake.url}/{repo_id}"
        with self.fake.lock:
            if repo_id in self.fake.repos:
                self._send(409, {"error": "You already created this model repo", "url": url})
                return
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.fake.add_repo(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                               private=private)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def create_branch(self, repo: str, branch: str, query: dict, fault: str | None) -> None:
        self._body()
        if not self._writer():
            return
        with self.fake.lock:
            r = self.fake.repos.get(repo)
            if r is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            if branch in r.branches:
                self._send(409, {"error": "Reference already exists"})
                return
            r.branches[branch] = r.branches["main"]
        self._send(200, {})

    def validate_yaml(self, query: dict, fault: str | None) -> None:
        import yaml

        content = json.loads(self._body() or b"{}").get("content", "")
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            meta = yaml.safe_load(m[1]) if m else {}
        except yaml.YAMLError as e:
            self._send(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
            return
        if isinstance(meta, dict) and meta.get("license") == "other" and not meta.get("license_name"):
            self._send(400, {"errors": [{"message": '"license_name" is required when "license" is "other"'}]})
            return
        self._send(200, {"errors": [], "warnings": []})

    def _writable_repo(self, repo: str) -> Repo | None:
        if not self._writer():
            return None
        r = self.fake.repos.get(repo)
        if r is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return r

    def preupload(self, repo: str, rev: str, query: dict, fault: str | None) -> None:
        payload = json.loads(self._body() or b"{}")
        r = self._writable_repo(repo)
        if r is None:
            return
        base = "main" if query.get("create_pr") else rev
        snap = r.snapshots.get(r.branches.get(base, ""), {})
        files = []
        for f in payload.get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            lfs = f["path"].endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf")) \
                or int(f.get("size", 0)) >= LFS_MIN_SIZE or b"\0" in sample
            old = snap.get(f["path"])
            oid = (old.sha256 if old.lfs else old.oid) if old is not None else None
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._send(200, {"files": files, "commitOid": r.branches.get(base)})

    def lfs_batch(self, repo: str, query: dict, fault: str | None) -> None:
        payload = json.loads(self._body() or b"{}")
        if self._writable_repo(repo) is None:
            return
        objects = []
        for o in payload.get("objects", []):
            obj: dict[str, Any] = {"oid": o["oid"], "size": int(o["size"]), "authenticated": True}
            if o["oid"] not in self.fake.lfs_store:
                obj["actions"] = {"upload": {"href": f"{self.fake.url}/lfs-upload/{o['oid']}"}}
            objects.append(obj)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, oid: str, query: dict, fault: str | None) -> None:
        data = self._body()
        if sha256(data) != oid:
            self._error(400, None, "sha256 mismatch")
            return
        with self.fake.lock:
            self.fake.lfs_store[oid] = data
        self._send(200, {})

    def commit(self, repo: str, rev: str, query: dict, fault: str | None) -> None:
        lines = [json.loads(x) for x in self._body().splitlines() if x.strip()]
        r = self._writable_repo(repo)
        if r is None:
            return
        create_pr = bool(query.get("create_pr"))
        with self.fake.lock:
            base = "main" if create_pr else rev
            if base not in r.branches:
                self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
                return
            snap = dict(r.snapshots[r.branches[base]])
            header: dict[str, Any] = {}
            added: dict[str, bytes] = {}
            deleted: list[str] = []
            for item in lines:
                key, value = item.get("key"), item.get("value", {})
                if key == "header":
                    header = value
                elif key == "file":
                    data = base64.b64decode(value["content"])
                    snap[value["path"]] = Entry(data, False)
                    added[value["path"]] = data
                elif key == "lfsFile":
                    data = self.fake.lfs_store.get(value["oid"])
                    if data is None:
                        self._error(422, None, f"LFS object {value['oid']} was never uploaded")
                        return
                    snap[value["path"]] = Entry(data, True)
                    added[value["path"]] = data
                elif key in ("deletedFile", "deletedFolder"):
                    for p in [p for p in snap if p == value["path"] or p.startswith(value["path"].rstrip("/") + "/")]:
                        del snap[p]
                        deleted.append(p)
            sha = self.fake._new_sha(repo)
            r.snapshots[sha] = snap
            pr = None
            if create_pr:
                r.prs += 1
                pr = r.prs
                r.branches[f"refs/pr/{pr}"] = sha
            else:
                r.branches[base] = sha
            self.fake.commits.append({"repo": repo, "revision": f"refs/pr/{pr}" if pr else base, "sha": sha,
                                      "summary": header.get("summary"), "description": header.get("description"),
                                      "files": added, "deleted": deleted, "pr": pr})
        self._send(200, {"commitUrl": f"{self.fake.url}/{repo}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": f"{self.fake.url}/{repo}/discussions/{pr}" if pr else None,
                         "success": True})
