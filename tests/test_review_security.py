"""The review app's guard (docs/review.md §2): token, cookie, Host, Origin, headers.

It holds the owner's identity and serves plaintext, so every route must refuse a request that
does not come from the owner's own page or script. A real `obscura review` process on an empty
file:// bucket (nothing to decrypt is needed to test who gets in).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.review_app import ROOT, Answer, ReviewApp
from tests.test_owner_requests import age_keygen


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewApp]:
    work = tmp_path_factory.mktemp("review-security")
    key = work / "owner.key"
    age_keygen(key)
    (work / "bucket").mkdir()
    with ReviewApp(
        ["--identity", str(key), "--bucket", (work / "bucket").as_uri()], work / "state"
    ) as review:
        assert review.wait_ready()["state"] == "ready", review.stderr
        yield review
    assert "Traceback" not in review.stderr, review.stderr


def host(app: ReviewApp) -> str:
    return app.base.removeprefix("http://")


def assert_hardened(answer: Answer) -> None:
    h = answer.headers
    assert h["Cache-Control"] == "no-store"
    assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer"
    assert "default-src 'self'" in h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]


PATHS = ["/", "/api/status", "/api/events", "/static/index.html",
         "/api/events/" + "0" * 32 + "/video"]  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
def test_without_the_token_nothing_is_served(app: ReviewApp, path: str) -> None:
    answer = app.get(path, auth=False)
    assert answer.status == 403, answer.body
    assert_hardened(answer)
    wrong = app.get(path, auth=False, headers={"Authorization": "Bearer " + "x" * 43})
    assert wrong.status == 403


def test_the_token_is_exchanged_for_a_cookie_once(app: ReviewApp) -> None:
    assert app.get("/?token=" + "y" * 43, auth=False).status == 403
    answer = app.get(f"/?token={app.token}", auth=False)
    assert answer.status == 303 and answer.headers["Location"] == "/"  # the token leaves the URL
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("obscura_review=") and app.token not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    value = cookie.split(";", 1)[0]
    page = app.get("/", auth=False, headers={"Cookie": value})
    assert page.status == 200 and b"<html" in page.body.lower()
    assert_hardened(page)
    assert app.get("/api/status", auth=False, headers={"Cookie": value}).status == 200
    forged = app.get("/api/status", auth=False, headers={"Cookie": "obscura_review=" + "z" * 43})
    assert forged.status == 403


@pytest.mark.parametrize(
    "name",
    ["evil.example:{p}", "attacker.test:80", "127.0.0.1:1", "localhost", "", "127.0.0.2:{p}"],
)
def test_a_foreign_host_is_refused(app: ReviewApp, name: str) -> None:
    """A DNS-rebinding page sends its own name with our port; no port, or another, too."""
    port = app.base.rsplit(":", 1)[1]
    answer = app.get("/api/status", headers={"Host": name.format(p=port)})
    assert answer.status == 403, (name, answer.body)
    assert app.get("/api/status", headers={"Host": f"localhost:{port}"}).status == 200


def test_changes_need_our_origin(app: ReviewApp) -> None:
    cookie = app.get(f"/?token={app.token}", auth=False).headers["Set-Cookie"].split(";", 1)[0]
    as_page = {"Cookie": cookie}
    for origin in ("http://evil.example", "null", f"https://{host(app)}", "http://localhost:1"):
        answer = app.request("/api/refresh", method="POST", body={}, auth=False,
                             headers={**as_page, "Origin": origin})  # fmt: skip
        assert answer.status == 403, origin
    no_origin = app.request("/api/refresh", method="POST", body={}, auth=False, headers=as_page)
    assert no_origin.status == 403
    ours = app.request("/api/refresh", method="POST", body={}, auth=False,
                       headers={**as_page, "Origin": app.base})  # fmt: skip
    assert ours.status == 202
    script = app.request("/api/refresh", method="POST", body={})  # Bearer, no Origin: a script
    assert script.status == 202
    app.wait_ready()


def test_bodies_are_small_json(app: ReviewApp) -> None:
    big = app.request("/api/refresh", method="POST", body={"x": "a" * 20_000})
    assert big.status == 413
    event = "/api/events/" + "0" * 32 + "/share"
    assert app.request(event, method="POST", body={"recipient": "age1x"}).status == 404


def test_static_files_stay_in_their_folder(app: ReviewApp) -> None:
    for path in ("/static/../security.py", "/static/%2e%2e/security.py", "/static/"):
        answer = app.get(path)
        assert answer.status in (403, 404), path
        assert b"Session" not in answer.body
        assert_hardened(answer)


def test_a_lan_address_needs_an_explicit_flag(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    age_keygen(key)
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "review", "--identity", str(key), "--bucket",
         tmp_path.as_uri(), "--address", "192.0.2.10", "--no-browser"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert "--allow-remote" in out.stderr and "anyone who gets the URL" in out.stderr


def test_a_missing_file_bucket_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    age_keygen(key)
    gone = (tmp_path / "no-such-bucket").as_uri()
    with ReviewApp(["--identity", str(key), "--bucket", gone], tmp_path / "state") as review:
        status = review.wait_ready()
    assert status["state"] == "error" and status["error"]["kind"] == "no-bucket", status
    assert "does not exist" in status["error"]["message"]


def test_a_flood_of_idle_connections_is_capped_and_then_served(app: ReviewApp) -> None:
    """300 sockets that never send a byte: the app keeps at most its cap open (the rest are
    aborted as they arrive), and answers again as soon as they go."""
    assert app.proc is not None
    port = int(app.base.rsplit(":", 1)[1])
    fds_before = len(os.listdir(f"/proc/{app.proc.pid}/fd"))
    flood = []
    try:
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        fds = len(os.listdir(f"/proc/{app.proc.pid}/fd"))
    finally:
        for sock in flood:
            sock.close()
    assert fds - fds_before <= 100, (fds_before, fds)  # MAX_CONNECTIONS, not 300
    deadline = time.monotonic() + 10
    while (answer := app.get("/api/status")).status != 200:
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)
    assert "Traceback" not in app.stderr, app.stderr
