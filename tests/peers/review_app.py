"""`obscura review` as a child process, for tests and benchmarks (loopback only, no browser).

    with ReviewApp(["--identity", key, "--bucket", bucket.as_uri()], state_dir) as app:
        app.get("/api/status").json()

It reads the URL with its token from the app's first line on stdout, as scripts do
(docs/review.md §1), and offers small urllib helpers that send the token as a Bearer header
(`auth=False` sends none; `headers` adds or overrides any, e.g. a foreign Host or Origin).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool = True  # False: the connection closed before Content-Length was reached

    def json(self) -> Any:
        return json.loads(self.body)


class ReviewApp:
    def __init__(self, args: list[str], state_dir: Path, *, env: dict[str, str] | None = None):
        self.args = [*args, "--no-browser", "--state-dir", str(state_dir)]
        # Never the user's own verifier state: --state-dir is given, this is a tripwire.
        self.env = dict(os.environ, OBSCURA_OWNER_STATE_DIR="/nonexistent/do-not-use")
        self.env.update(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.url = self.base = self.token = ""
        self.stderr_lines: list[str] = []

    def __enter__(self) -> ReviewApp:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "review", *self.args],
            cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("http://"):
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            raise RuntimeError(f"review did not start: {line!r} {self.stderr}")
        self.url = line.strip()
        parts = urlsplit(self.url)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.token = parse_qs(parts.query)["token"][0]

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self.stderr_lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        body: Any = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        if auth:
            sent["Authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=sent)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=60) as response:
                try:
                    return Answer(response.status, dict(response.headers), response.read())
                except http.client.IncompleteRead as cut:
                    return Answer(response.status, dict(response.headers), cut.partial, False)
        except urllib.error.HTTPError as e:
            return Answer(e.code, dict(e.headers), e.read())

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request(path, **kw)

    def status(self) -> dict[str, Any]:
        return self.get("/api/status").json()

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["state"] != "loading" or time.monotonic() > deadline:
                return status
            time.sleep(0.1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # tests look at the redirect itself
