"""The setup code when the config has none, and `obscura pair` (QR code + 8-digit code)."""

from __future__ import annotations

import os
from pathlib import Path

from accessories.setup_code import generate_setup_code, setup_code_problem
from bridge.config import Config


def _private_write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def resolve_setup_code(config: Config) -> str:
    """The configured code, or one generated once and kept in state_dir/setup_code (0600)."""
    if config.hap.setup_code:
        return config.hap.setup_code
    path = config.state_dir / "setup_code"
    try:
        code = path.read_text(encoding="utf-8").strip()
        if setup_code_problem(code) is None:
            return code
    except FileNotFoundError:
        pass
    code = generate_setup_code()
    _private_write(path, code + "\n")
    return code


def print_pairing(config: Config) -> int:
    """Print, per HAP server, the setup URI as a terminal QR code and the 8-digit setup code."""
    import qrcode

    from accessories.bridge import pairing_uris

    code = resolve_setup_code(config)
    uris = pairing_uris(
        config.name,
        code,
        config.state_dir,
        [c.name for c in config.cameras if c.enabled],
        standalone=config.hap.standalone,
        doorbells=[c.name for c in config.cameras if c.enabled and c.doorbell],
    )
    for label, uri in uris:
        qr = qrcode.QRCode(border=2)
        qr.add_data(uri)
        qr.make(fit=True)
        print(f"\n{label}: scan with the Home app (Add Accessory), or enter the code by hand\n")
        qr.print_ascii(invert=True)
        print(f"  Setup code:  {code}")
        print(f"  Setup URI:   {uri}")
    print(
        "\nThe iPhone must be on the same network as the bridge, and `obscura run` must be running."
    )
    return 0
