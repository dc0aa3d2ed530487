"""`obscura review`: start the review app and print its URL (docs/review.md §1).

The first line on standard output is the URL with the session token, for scripts and tests;
everything else goes to standard error. The browser is opened on it unless `--no-browser`.
A non-loopback `--address` needs `--allow-remote` and gets a warning: whoever has the URL sees
every clip, over plain HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
import webbrowser
from pathlib import Path

from aiohttp import web

from bridge.owner.audit import Owner, OwnerError
from bridge.status import KEEPALIVE_TIMEOUT, HostCheck, cap_connections
from bridge.store.bucket import Bucket, open_bucket

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 96


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _has_display() -> bool:
    """A graphical browser can open: without one, webbrowser may start a text browser on our
    terminal (lynx, www-browser) and take it over."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _demo(args: argparse.Namespace) -> None:
    """--demo: the identity and bucket the no-config demo bridge made (bridge/demo.py)."""
    from bridge.demo import demo_paths

    paths = demo_paths(Path(args.demo) if isinstance(args.demo, str) else None)
    if not paths.identity.exists():
        raise OwnerError(
            f"no demo key at {paths.identity}: start the demo first (`./scripts/run.sh` or "
            "`obscura run` without a configuration)"
        )
    args.identity, args.bucket = str(paths.identity), paths.bucket_url
    args.url = args.url or paths.status_url  # the demo bridge's API, for share and delete


def cmd_review(args: argparse.Namespace) -> int:
    if args.demo is not None:
        _demo(args)
    elif not args.identity:
        raise OwnerError("give the owner's identity file: --identity ~/owner.key (or --demo)")
    if not _is_loopback(args.address):
        if not args.allow_remote:
            raise OwnerError(
                f"--address {args.address} is not a loopback address: anyone who gets the URL "
                "could watch every clip; add --allow-remote if that is what you want"
            )
        print(
            f"WARNING: serving on {args.address}: anyone on the network with the URL can watch "
            "every clip, and the traffic is plain HTTP (not encrypted)",
            file=sys.stderr,
        )
    owner = Owner(args)  # reads the identity and checks the bucket URL before anything listens
    bucket = open_bucket(owner.bucket_url, getattr(args, "credentials_file", None))
    try:
        return asyncio.run(_serve(args, owner, bucket))
    except KeyboardInterrupt:
        return 0


async def _serve(args: argparse.Namespace, owner: Owner, bucket: Bucket) -> int:
    from bridge.owner.review.app import make_app
    from bridge.owner.review.security import Session

    host = HostCheck(args.address)
    session = Session(host)
    app = make_app(owner, bucket, session, bridge_url=args.url)
    # Bounded like the bridge's status API: a flood of idle sockets cannot exhaust the file
    # descriptors (a browser uses a handful; players and posters a few dozen at most).
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT
    )
    await runner.setup()
    assert runner.server is not None
    cap_connections(runner.server, MAX_CONNECTIONS)
    try:
        site = web.TCPSite(runner, args.address, args.port)
        await site.start()
        host.port = int(runner.addresses[0][1])  # the port bound (0: a free one)
        shown = f"[{args.address}]" if ":" in args.address else args.address
        url = f"http://{shown}:{host.port}/?token={session.token}"
        print(url, flush=True)
        print(f"obscura review: serving {owner.bucket_url} on {shown}:{host.port}; Ctrl-C stops",
              file=sys.stderr)  # fmt: skip
        if not args.no_browser and _has_display():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(webbrowser.open, url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def add_review_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    p = sub.add_parser(
        "review", help="a timeline of your clips in the browser, decrypted on this computer"
    )
    p.add_argument("--identity", "-i", metavar="FILE", help="the owner's age identity file")
    p.add_argument("--config", "-c", metavar="FILE", help="configuration file ([storage])")
    p.add_argument("--bucket", metavar="URL", help="the bucket (instead of a config file)")
    p.add_argument(
        "--credentials-file", type=Path, metavar="FILE", help="the bucket's credentials"
    )
    p.add_argument(
        "--demo", nargs="?", const=True, default=None, metavar="DIR",
        help="open the no-config demo's clips with its demo key (DIR: its state dir)",
    )  # fmt: skip
    p.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --address"
    )
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    p.add_argument("--url", metavar="URL", help="the bridge's local API (for share and delete)")
    p.add_argument(
        "--state-dir", metavar="DIR",
        help="pinned keys and verifier state (as `obscura clips`)",
    )  # fmt: skip
    p.set_defaults(func=cmd_review)
    return p
