"""A fake Hugging Face Hub on 127.0.0.1: a real HTTP server that answers as the Hub's file API does for
huggingface_hub 2.4's hf_hub_download (HEAD then GET on /<repo>/resolve/<revision>/<file>, LFS files through a
redirect to a second server standing in for the CDN). Used by test_encoder_hub.py and test_encoder_workflow.py."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote


@dataclass
class FakeRepo:
    """One repo's files at each revision: {revision: (commit, {filename: bytes})}; the names in `lfs` are served as
    the Hub serves LFS files, by a redirect to another host (the CDN)."""

    revisions: dict[str, tuple[str, dict[str, bytes]]]
    lfs: tuple[str, ...] = ("pytorch_model.bin", "model.safetensors")


@dataclass
class FakeHub:
    endpoint: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path), the CDN's too


def _etag(filename: str, content: bytes, lfs: bool) -> str:
    """The Hub's ETags: the sha256 of an LFS file, the git blob sha1 of any other."""
    return hashlib.sha256(content).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _handler(repos: dict[str, FakeRepo], log: list[tuple[str, str]], cdn: list[str]) -> type[http.server.BaseHTTPRequestHandler]:
    """The Hub's `resolve` API as huggingface_hub 2.4's hf_hub_download uses it (HEAD for metadata, then GET), and a CDN."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads `log`
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _send(self, status: int, headers: dict[str, str], content: bytes, body: bool) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(content)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(content)

        def _answer(self, body: bool) -> None:
            log.append((self.command, self.path))
            parts = self.path.split("/")
            if parts[1] == "cdn":  # /cdn/<sha256>: the bytes behind an LFS redirect
                content = next((c for repo in repos.values() for _, files in repo.revisions.values() for c in files.values()
                                if hashlib.sha256(c).hexdigest() == parts[2]), None)
                return self._send(200, {}, content, body) if content is not None else self._send(404, {}, b"", body)
            # /<owner>/<repo>/resolve/<revision>/<filename>
            if len(parts) < 6 or parts[3] != "resolve":
                return self._send(404, {}, b"Not Found", body)
            repo_id, revision, filename = "/".join(parts[1:3]), unquote(parts[4]), unquote("/".join(parts[5:]))
            if repo_id not in repos:  # what the Hub tells an anonymous client for a missing (or private) repo
                return self._send(401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b"", body)
            repo = repos[repo_id]
            if revision not in repo.revisions:
                return self._send(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b"", body)
            commit, files = repo.revisions[revision]
            if filename not in files:
                return self._send(404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit}, b"", body)
            content, lfs = files[filename], filename in repo.lfs
            etag = _etag(filename, content, lfs)
            if lfs:
                headers = {"X-Repo-Commit": commit, "X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(content)),
                           "ETag": f'"{_etag(filename, b"pointer", False)}"', "Location": f"{cdn[0]}/cdn/{etag}"}
                return self._send(302, headers, b"", body)
            return self._send(200, {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}, content, body)

    return Handler


@contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # HTTP/1.0: no connection outlives its answer
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def fake_hub(repos: dict[str, FakeRepo]) -> Iterator[FakeHub]:
    """The Hub on one port and its CDN on another (another origin, as the real CDN is), up for the block."""
    from huggingface_hub.utils import close_session

    log: list[tuple[str, str]] = []
    cdn: list[str] = []
    try:
        with _serving(_handler(repos, log, cdn)) as cdn_url, _serving(_handler(repos, log, cdn)) as hub_url:
            cdn.append(cdn_url)
            yield FakeHub(hub_url, log)
    finally:
        close_session()  # huggingface_hub's shared client: drop its connections to the servers just closed
