"""`obscura clips play ID`: watch a clip without its plaintext ever touching the disk.

The ciphertext is downloaded (checked against the signed manifest's SHA-256 and size, as
`clips get` does) into a private temporary directory; then it is decrypted chunk by chunk,
each chunk authenticated, straight into a video player's standard input. Clips are fragmented
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
from crypto.age import AgeError, AgeReader

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


def pipe_decrypted(owner: Owner, encrypted: Path, argv: list[str], label: str) -> int:
    """Decrypt `encrypted` into `argv`'s stdin; the player's exit status (0 if it quit early)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    failed: str | None = None
    try:
        with encrypted.open("rb") as src:
            for chunk in AgeReader(owner.identities, src).chunks():
                proc.stdin.write(chunk)
    except BrokenPipeError:
        pass  # the viewer closed the player before the end
    except AgeError as e:
        failed = f"{label}: cannot decrypt ({e}); playback stopped"
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
        view, clip = owner.find_clip(views, args.id)
        label = f"clip {clip.id[:8]}"
        with tempfile.TemporaryDirectory(prefix="obscura-play-") as tmp:  # 0700, ciphertext only
            encrypted = Path(tmp) / "clip.age"
            owner.download(f"{view.layout.root}/{clip.id}", clip.sha256, clip.size, encrypted,
                           label)
            print(f"playing {label} with {argv[0]}", file=sys.stderr)
            status = pipe_decrypted(owner, encrypted, argv, label)
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
