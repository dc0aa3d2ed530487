"""`obscura keys …`, `obscura clips …` and `obscura review`: the owner's commands (bridge/cli.py
mounts them)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from bridge.owner import clips, keys
from bridge.owner.audit import OwnerError
from bridge.owner.review.cli import add_review_parser
from bridge.store.bucket import BucketError
from crypto.age_keys import AgeError

Command = Callable[[argparse.Namespace], int]


def _one_line_errors(func: Command) -> Command:
    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (OwnerError, AgeError, BucketError) as e:
            print(f"obscura: {e}", file=sys.stderr)
            return 1

    return run


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys.add_commands(sub)
    clips.add_commands(sub)
    review = add_review_parser(sub)
    review.set_defaults(func=_one_line_errors(review.get_default("func")))
    for name in ("keys", "clips"):
        group = sub.choices[name]
        for action in group._subparsers._group_actions:  # type: ignore[union-attr]
            for parser in action.choices.values():
                func = parser.get_default("func")
                parser.set_defaults(func=_one_line_errors(func))
