"""`obscura clips play ID`: watch a clip without its plaintext ever touching the disk.

The ciphertext is downloaded (checked against the signed manifest's SHA-256 and size, as
`clips get` does) into a private temporary directory, one part of the event at a time; then it
is decrypted chunk by chunk, each chunk authenticated, straight into a video player's standard
input (an event's parts joined on the way: bridge/owner/events.py). Clips are fragmented
MP4 with the `moov` box first, so players can play them from a pipe.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bridge.owner.audit import Owner, OwnerError, report_problems
from bridge.owner.events import Event, decrypt_event, find_event

#: Tried in order when neither --player nor $OBSCURA_PLAYER is given: each reads stdin.
PLAYERS = (
    ("mpv", "--really-quiet", "--force-window=yes", "-"),
    ("ffplay", "-autoexit", "-loglevel", "error", "-"),
    ("vlc", "--play-and-exit", "--quiet", "-"),
)


def player_command(choice: str | None) -> list[str]:
    """The player to pipe into: --player, else $OBSCURA_PLAYER, else the first one installed."""
    choice = choice or os.environ.get("OBSCURA_PLAYER")
    if choice:
        argv = shlex.split(choice)
        if not argv or shutil.which(argv[0]) is None:
            raise OwnerError(f"player {choice!r} not found")
        return argv
    for argv in PLAYERS:
        if shutil.which(argv[0]) is not None:
            return list(argv)
    names = ", ".join(p[0] for p in PLAYERS)
    raise OwnerError(
        f"no video player found (tried {names}): install one, pass --player 'CMD' (a command "
        "that plays an MP4 from its standard input), or save the clip with `clips get`"
    )


def pipe_decrypted(owner: Owner, event: Event, tmp: Path, argv: list[str], label: str) -> int:
    """Download and decrypt the event's parts into `argv`'s stdin (the ciphertext of one part
    at a time in `tmp`); the player's exit status (0 if it quit early)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    failed: str | None = None
    try:
        decrypt_event(owner, event, tmp, proc.stdin.write, label)
    except BrokenPipeError:
        pass  # the viewer closed the player before the end
    except OwnerError as e:
        failed = f"{e}; playback stopped"
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    status = proc.wait()
    if failed:
        raise OwnerError(failed)
    return status


def cmd_play(args: argparse.Namespace) -> int:
    argv = player_command(args.player)  # before any download: a missing player fails fast
    owner = Owner(args)
    try:
        views = owner.all(deep=False)
        report_problems(views, strict=True)
        event = find_event(views, args.id)
        label = f"clip {event.id[:8]}"
        with tempfile.TemporaryDirectory(prefix="obscura-play-") as tmp:  # 0700, ciphertext only
            print(f"playing {label} with {argv[0]}", file=sys.stderr)
            status = pipe_decrypted(owner, event, Path(tmp), argv, label)
    finally:
        owner.close()
    if status != 0:
        print(f"{argv[0]} exited with status {status}", file=sys.stderr)
    return 0 if status == 0 else 1


def add_play_parser(
    add: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """Wire `clips play` into the `clips` sub-commands (common: the shared options)."""
    play = common(add.add_parser("play", help="decrypt one clip straight into a video player"))
    play.add_argument("id", metavar="ID", help="clip id (or a unique prefix)")
    play.add_argument(
        "--player",
        metavar="CMD",
        help="command that plays an MP4 from stdin (default: $OBSCURA_PLAYER, mpv, ffplay, vlc)",
    )
    play.set_defaults(func=cmd_play)
