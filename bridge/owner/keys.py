"""`obscura keys …`: the owner's age identity and who future clips are encrypted to."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

from bridge.config import Config, ConfigNotFound, find_config, load_config
from bridge.owner.config_edit import set_recipients
from crypto.age_keys import AgeError, X25519Recipient, generate_identity, write_identity_file

DEFAULT_IDENTITY = Path("obscura-owner.key")
RESTART = "Restart the bridge (`obscura run`) for the change to take effect."


def _config_path(args: argparse.Namespace) -> Path:
    path = find_config(args.config)
    if path is None or not path.exists():
        raise ConfigNotFound(args.config)
    return path


def _recipients(config: Config) -> list[str]:
    return list(config.storage.recipients) if config.storage else []


def _parse_recipient(text: str) -> str:
    try:
        return str(X25519Recipient.parse(text.strip()))
    except AgeError as e:
        raise SystemExit(f"obscura: {text!r} is not an age recipient (age1…): {e}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    path = Path(args.output)
    identity = generate_identity()
    try:
        write_identity_file(path, identity)
    except FileExistsError:
        print(
            f"obscura: {path} exists; not overwriting an identity (choose another -o)",
            file=sys.stderr,
        )
        return 1
    recipient = identity.recipient
    print(f"Wrote the owner's identity to {path} (mode 0600). Keep it secret and back it up:")
    print("without it, no one can open the clips, not even you.")
    print(f"Public key (recipient): {recipient}")
    print(f"Next: obscura keys add-recipient {recipient}   (then restart the bridge)")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = load_config(path)
    recipient = _parse_recipient(args.recipient)
    current = _recipients(config)
    if recipient in current:
        print(f"{recipient} is already a recipient; nothing changed.")
        return 0
    set_recipients(path, [*current, recipient], (config.state_dir / "bucket").as_uri())
    print(f"Added {recipient} to [storage].recipients in {path}.")
    print("Clips recorded from now on are encrypted to it (earlier clips are not re-encrypted).")
    print(RESTART)
    _show_bridge_key(config)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    path = _config_path(args)
    config = load_config(path)
    recipient = _parse_recipient(args.recipient)
    current = _recipients(config)
    if recipient not in current:
        print(f"obscura: {recipient} is not a recipient in {path}", file=sys.stderr)
        return 1
    rest = [r for r in current if r != recipient]
    if not rest and not args.force:
        print(
            "obscura: that is the last recipient; with none the bridge records nothing, and "
            "its retention and the upload of clips waiting in its spool pause too. "
            "Add another first, or pass --force.",
            file=sys.stderr,
        )
        return 1
    set_recipients(path, rest, (config.state_dir / "bucket").as_uri())
    print(f"Removed {recipient} from [storage].recipients in {path}.")
    print(
        "Removal is prospective: clips already recorded stay readable with that key "
        "(delete them, or let retention expire them, to end that)."
    )
    if not rest:
        print(
            "No recipient is left: after the restart the bridge records nothing (cameras keep "
            "streaming). Retention pauses too: clips in the bucket stay past retention_days, "
            "and clips waiting in the spool stay there, until you add one with "
            "`obscura keys add-recipient age1…`."
        )
    print(RESTART)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = load_config(_config_path(args))
    recipients = _recipients(config)
    if not recipients:
        print(
            "No recipients: the bridge records no clips (cameras keep streaming). Add one with "
            "`obscura keys generate` and `obscura keys add-recipient age1…`, then restart it."
        )
    for r in recipients:
        print(r)
    _show_bridge_key(config)
    return 0


def bridge_status(config: Config, timeout: float = 1.0) -> dict | None:
    """The running bridge's status JSON (its local status API), or None when unreachable."""
    if not config.status.enabled:
        return None
    host = config.status.address
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    try:
        url = f"http://{host}:{config.status.port}/status"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def _show_bridge_key(config: Config) -> None:
    status = bridge_status(config)
    storage = (status or {}).get("storage") or {}
    if storage.get("bridge_key"):
        print(f"Bridge {storage.get('bridge_id')} key: {storage['bridge_key']}")
        print("  (pin it: obscura clips verify --bridge-key …)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="the owner's keys and the clip recipients")
    ks = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", metavar="FILE", help="configuration file")
        return p

    gen = ks.add_parser("generate", help="create an age identity for the owner")
    gen.add_argument(
        "-o",
        "--output",
        default=str(DEFAULT_IDENTITY),
        metavar="FILE",
        help=f"identity file to create (default: {DEFAULT_IDENTITY})",
    )
    gen.set_defaults(func=cmd_generate)
    add = with_config(ks.add_parser("add-recipient", help="encrypt future clips to age1…"))
    add.add_argument("recipient", metavar="AGE1…")
    add.set_defaults(func=cmd_add)
    rm = with_config(ks.add_parser("remove", help="stop encrypting future clips to age1…"))
    rm.add_argument("recipient", metavar="AGE1…")
    rm.add_argument("--force", action="store_true", help="allow removing the last recipient")
    rm.set_defaults(func=cmd_remove)
    ls = with_config(ks.add_parser("list", help="recipients (and the running bridge's key)"))
    ls.set_defaults(func=cmd_list)
