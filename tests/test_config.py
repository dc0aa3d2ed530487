"""Bad configuration: every error names the file and the key, and `obscura run` exits 2."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import ConfigError, load_config

GOOD = """
[bridge]
name = "Home"
state_dir = "state"

[hap]
address = "127.0.0.1"
port = 51900
setup_code = "482-91-375"
advertise = false

[[cameras]]
name = "Front door"
source = "rtsp://admin:hunter2@192.0.2.10:554/stream1"

[[cameras]]
name = "Garage"
source = "demo:"
"""

CAM = '[[cameras]]\nname = "A"\nsource = "demo:"\n'
BAD = [
    ("[hap]\nport = 70000\n", "hap.port", "port number"),
    ('[hap]\nport = "51826"\n', "hap.port", "must be an integer"),
    ('[hap]\nsetup_code = "123-45-678"\n', "hap.setup_code", "too easy"),
    ('[hap]\nsetup_code = "12345678"\n', "hap.setup_code", "XXX-XX-XXX"),
    ('[hap]\naddress = "my-host"\n', "hap.address", "IP address"),
    ("[hap]\nadvertize = true\n", "hap.advertize", "unknown key"),
    ('[bridge]\nname = ""\n', "bridge.name", "1 to 64"),
    ('[[cameras]]\nsource = "demo:"\n', "cameras[0].name", "is required"),
    ('[[cameras]]\nname = "A"\n', "cameras[0].source", "is required"),
    (
        '[[cameras]]\nname = "A"\nsource = "http://u:secretpw@cam/video"\n',
        "cameras[0].source",
        "unsupported source",
    ),
    ('[[cameras]]\nname = "A"\nsource = "rtsp:///nohost"\n', "cameras[0].source", "no host"),
    (
        '[[cameras]]\nname = "A"\nsource = "demo:"\n[[cameras]]\nname = "a"\nsource = "demo:"\n',
        "cameras[1].name",
        "duplicate camera name",
    ),
    ('[[cameras]]\nname = "A"\nsource = "demo:"\nfps = 0\n', "cameras[0].fps", "between 1 and 120"),
    (
        '[[cameras]]\nname = "A"\nsource = "demo:"\nwidth = 640\n',
        "cameras[0].height",
        "go together",
    ),
    (
        '[[cameras]]\nname = "A"\nsource = "demo:"\nrtsp_transport = "http"\n',
        "cameras[0].rtsp_transport",
        "one of tcp, udp",
    ),
    ('cameras = "demo:"\n', "cameras", "must be an array"),
    (CAM + 'subjects = ["person", "ghost"]\n', "cameras[0].subjects", "unknown subject 'ghost'"),
    (CAM + 'motion_sensor = "always"\n', "cameras[0].motion_sensor", "subjects, motion, off"),
    (CAM + "detect = { min_scor = 0.5 }\n", "cameras[0].detect.min_scor", "unknown key"),
    (CAM + "detect = { min_score = 1.5 }\n", "cameras[0].detect.min_score", "from 0.0 to 1.0"),
    (
        CAM + 'zones = [{ name = "A", polygon = [[0, 0], [1, 0]] }]\n',
        "cameras[0].zones[0].polygon",
        "",
    ),
    (CAM + 'zones = [{ name = "A" }]\n', "cameras[0].zones[0].polygon", "is required"),
    ('[detect]\nlabels = { parcel = "box" }\n', "detect.labels.parcel", "not a subject"),
    ("[detect]\nthreads = 0\n", "detect.threads", "between 1 and 64"),
    ('[detect]\nmodel_type = "ssd"\n', "detect.model_type", "nanodet or yolo"),
    ("[hap\nport = 1\n", "", "not valid TOML"),
    (
        '[storage]\nbucket = "file:///b"\nrecipients = ["age1nothing"]\n',
        "storage.recipients[0]",
        "must be an age public key",
    ),
    ('[storage]\nbucket = "file:///b"\nrecipients = "age1x"\n', "storage.recipients", ""),
]


def test_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "obscura.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.name == "Home"
    assert config.state_dir == tmp_path / "state"  # relative to the config file
    assert config.hap.port == 51900 and config.hap.advertise is False
    assert [c.name for c in config.cameras] == ["Front door", "Garage"]
    assert config.cameras[0].rtsp_transport == "tcp"


@pytest.mark.parametrize(("text", "key", "problem"), BAD)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    assert problem in message
    if key:
        assert f"'{key}'" in message
    assert "secretpw" not in message and "hunter2" not in message


@pytest.mark.parametrize("recipients", ["recipients = []\n", ""])
def test_no_recipient_is_not_a_configuration_error(tmp_path: Path, recipients: str) -> None:
    """Recording off (the service says why), not a bridge that will not start."""
    path = tmp_path / "obscura.toml"
    path.write_text(GOOD + f'\n[storage]\nbucket = "file:///b"\n{recipients}')
    storage = load_config(path).storage
    assert storage is not None and storage.recipients == ()


def test_run_with_bad_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[hap]\nport = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert str(path) in result.stderr and "'hap.port'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_init_writes_private_loadable_config_with_fresh_code(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "obscura.toml"
    args = [
        "init",
        "--config",
        str(path),
        "--state-dir",
        str(tmp_path / "state"),
        "--camera",
        "Porch=rtsp://u:p@192.0.2.5/live",
    ]
    assert main(args) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = load_config(path)
    assert first.cameras[0].name == "Porch"
    assert first.hap.setup_code
    assert main(args) == 2  # refuses to overwrite
    assert main([*args, "--force"]) == 0
    assert load_config(path).hap.setup_code != first.hap.setup_code


def test_the_shipped_example_config_loads() -> None:
    """deploy/example.toml is what users copy: it must stay valid as keys change."""
    example = Path(__file__).resolve().parents[1] / "deploy" / "example.toml"
    config = load_config(example)
    assert [c.name for c in config.cameras] == ["Front door", "Garage", "Demo"]
    assert config.storage is not None and config.storage.recipients == ()  # recording off
