"""The broken-configuration table: each one exits 2 naming the file and the key, nothing starts.

Issue #8 (a hostile run: 10 of 60 broken configurations did not exit 2) gave the cases, and
every key's wrong type and range is added. Each case is checked in-process through what
`obscura run` does before starting anything (`load_config`, then `check_runnable`), and a
representative subset (every bind failure among them) by running the real `obscura run --config F`
as a child process: exit 2, the file and the key in stderr, no traceback, within seconds.

Addresses "not of this host" are from TEST-NET-1 (192.0.2.0/24, RFC 5737): a bind to one fails
locally and sends nothing. Busy ports are held by the test on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.config import ConfigError, load_config
from bridge.preflight import check_host, check_runnable

ROOT = Path(__file__).resolve().parents[1]
ELSEWHERE = "192.0.2.1"  # TEST-NET-1: never an address of this host
SECRET = "never-logged-5c1e"

BRIDGE = '[bridge]\nname = "Table"\nstate_dir = "state"\n'
HAP = '[hap]\naddress = "127.0.0.1"\nport = 0\nsetup_code = "482-91-375"\nadvertise = false\n'
STATUS = '[status]\naddress = "127.0.0.1"\nport = 0\n'
DETECT = "[detect]\nenabled = false\n"
CAM = '[[cameras]]\nname = "Porch"\nsource = "demo:"\n'
S3 = "s3://clips/home?endpoint=http://127.0.0.1:9&region=us-east-1"
KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"  # age's spec example


def conf(
    *,
    top: str = "",
    bridge: str = BRIDGE,
    hap: str = HAP,
    status: str = STATUS,
    detect: str = DETECT,
    storage: str = "",
    cams: str = CAM,
) -> str:
    """A valid loopback configuration with one part replaced (top-level keys go first)."""
    return top + bridge + hap + status + detect + storage + cams


def storage(bucket: str, extra: str = "") -> str:
    return f'[storage]\nbucket = "{bucket}"\nrecipients = ["{KEY}"]\n{extra}'


def creds(name: str, mode: int = 0o600, text: str | None = None) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        path = d / name
        path.write_text(
            text if text is not None
            else f"AWS_ACCESS_KEY_ID=AK\nAWS_SECRET_ACCESS_KEY={SECRET}\n"
        )
        path.chmod(mode)

    return make


def az_creds(d: Path) -> None:
    path = d / "az.env"
    path.write_text("AZURE_STORAGE_ACCOUNT_KEY=c2VjcmV0\n")
    path.chmod(0o600)


def a_file(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text("not a directory\n")


def a_dir(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).mkdir()


def a_symlink(d: Path) -> None:
    creds("real.env")(d)
    (d / "s3.env").symlink_to(d / "real.env")


@dataclass(frozen=True)
class Case:
    id: str
    text: str | bytes
    key: str  # "" for errors of the whole file (encoding, syntax): the message has a line
    problem: str
    setup: Callable[[Path], None] | None = None
    child: bool = False  # also run as `obscura run` in a child process
    busy: str = ""  # "hap" / "status": the test holds the port the config names ({busy})


CASES = [
    # The whole file
    Case("invalid-utf8", conf(bridge='[bridge]\nname = "Caf\udce9"\n').encode(
         errors="surrogateescape"), "", "not valid UTF-8 at line 2, column 12", child=True),
    # In-process only: were it not refused, an empty file would listen on every interface.
    Case("empty-file", "", "cameras", "no cameras configured"),
    Case("comments-only", "# nothing here yet\n\n", "cameras", "no cameras configured"),
    Case("toml-syntax", conf(hap="[hap\nport = 1\n"), "", "not valid TOML", child=True),
    Case("toml-nesting", "x = " + "[" * 3000 + "]" * 3000 + "\n", "", "nested too deeply"),
    Case("toml-duplicate-key", conf(bridge=BRIDGE + 'name = "Again"\n'), "", "line 4"),
    # Cameras
    Case("no-cameras", conf(cams=""), "cameras", "no cameras configured", child=True),
    Case("all-disabled", conf(cams=CAM + "enabled = false\n"), "cameras", "enabled = false",
         child=True),
    Case("cameras-not-array", conf(top='cameras = "demo:"\n', cams=""), "cameras",
         "must be an array"),
    Case("camera-not-table", conf(top="cameras = [1]\n", cams=""), "cameras[0]",
         "must be a table"),
    Case("camera-no-name", conf(cams='[[cameras]]\nsource = "demo:"\n'), "cameras[0].name",
         "is required"),
    Case("camera-empty-name", conf(cams='[[cameras]]\nname = " "\nsource = "demo:"\n'),
         "cameras[0].name", "1 to 64"),
    Case("camera-long-name", conf(cams=f'[[cameras]]\nname = "{"x" * 65}"\nsource = "demo:"\n'),
         "cameras[0].name", "1 to 64"),
    Case("camera-duplicate", conf(cams=CAM + CAM.replace("Porch", "PORCH")), "cameras[1].name",
         "duplicate camera name"),
    Case("camera-no-source", conf(cams='[[cameras]]\nname = "A"\n'), "cameras[0].source",
         "is required"),
    Case("source-http", conf(cams='[[cameras]]\nname = "A"\nsource = "http://u:pw@cam/v"\n'),
         "cameras[0].source", "unsupported source", child=True),
    Case("source-rtsp-no-host", conf(cams='[[cameras]]\nname = "A"\nsource = "rtsp:///x"\n'),
         "cameras[0].source", "no host"),
    Case("source-v4l2-no-path", conf(cams='[[cameras]]\nname = "A"\nsource = "v4l2:"\n'),
         "cameras[0].source", "needs a path"),
    Case("source-int", conf(cams='[[cameras]]\nname = "A"\nsource = 554\n'), "cameras[0].source",
         "must be a string, not an integer"),
    Case("prebuffer-range", conf(cams=CAM + "prebuffer_seconds = 0.5\n"),
         "cameras[0].prebuffer_seconds", "between 1 and 30"),
    Case("prebuffer-type", conf(cams=CAM + 'prebuffer_seconds = "4"\n'),
         "cameras[0].prebuffer_seconds", "must be a number"),
    Case("width-alone", conf(cams=CAM + "width = 640\n"), "cameras[0].height", "go together"),
    Case("width-odd", conf(cams=CAM + "width = 641\nheight = 480\n"), "cameras[0].width",
         "even number"),
    Case("fps-zero", conf(cams=CAM + "fps = 0\n"), "cameras[0].fps", "between 1 and 120"),
    Case("fps-nan", conf(cams=CAM + "fps = nan\n"), "cameras[0].fps", "between 1 and 120"),
    Case("rtsp-transport", conf(cams=CAM + 'rtsp_transport = "http"\n'),
         "cameras[0].rtsp_transport", "one of tcp, udp"),
    Case("input-format", conf(cams=CAM + 'input_format = "raw"\n'), "cameras[0].input_format",
         "mjpeg, yuyv422, h264"),
    Case("live-mode", conf(cams=CAM + 'live_mode = "fast"\n'), "cameras[0].live_mode",
         "auto, copy, transcode"),
    Case("camera-enabled-type", conf(cams=CAM + 'enabled = "yes"\n'), "cameras[0].enabled",
         "true or false"),
    Case("camera-unknown-key", conf(cams=CAM + 'nmae = "B"\n'), "cameras[0].nmae", "unknown key"),
    Case("camera-subject", conf(cams=CAM + 'subjects = ["ghost"]\n'), "cameras[0].subjects",
         "unknown subject 'ghost'"),
    Case("camera-zone", conf(cams=CAM + 'zones = [{ name = "Z", polygon = [[0, 0], [1, 0]] }]\n'),
         "cameras[0].zones[0].polygon", ""),
    # [bridge]
    Case("bridge-not-table", conf(top="bridge = 1\n", bridge=""), "bridge", "must be a table"),
    Case("bridge-name-empty", conf(bridge='[bridge]\nname = ""\nstate_dir = "state"\n'),
         "bridge.name", "1 to 64"),
    Case("bridge-name-int", conf(bridge='[bridge]\nname = 7\nstate_dir = "state"\n'),
         "bridge.name", "must be a string"),
    Case("log-level", conf(bridge=BRIDGE + 'log_level = "verbose"\n'), "bridge.log_level",
         "debug, info, warning, error"),
    Case("bridge-unknown-key", conf(bridge=BRIDGE + 'nmae = "x"\n'), "bridge.nmae",
         "unknown key"),
    Case("unknown-section", conf(top='[happ]\nport = 1\n'), "happ", "unknown key"),
    Case("state-dir-a-file", conf(), "bridge.state_dir", "is not a directory",
         setup=a_file("state"), child=True),
    Case("state-dir-under-a-file", conf(bridge='[bridge]\nstate_dir = "f/state"\n'),
         "bridge.state_dir", "cannot be created", setup=a_file("f")),
    Case("state-dir-int", conf(bridge="[bridge]\nstate_dir = 5\n"), "bridge.state_dir",
         "must be a string"),
    Case("state-dir-nul", conf(bridge='[bridge]\nstate_dir = "a\\u0000b"\n'),
         "bridge.state_dir", "NUL"),
    Case("state-dir-no-user", conf(bridge='[bridge]\nstate_dir = "~no-such-user-x9/s"\n'),
         "bridge.state_dir", "no such user"),
    # [hap]
    Case("hap-port-range", conf(hap=HAP.replace("port = 0", "port = 70000")), "hap.port",
         "port number 0-65535", child=True),
    Case("hap-port-string", conf(hap=HAP.replace("port = 0", 'port = "51826"')), "hap.port",
         "must be an integer"),
    Case("hap-port-float", conf(hap=HAP.replace("port = 0", "port = 5.5")), "hap.port",
         "must be an integer, not a number"),
    Case("hap-address-name", conf(hap=HAP.replace('"127.0.0.1"', '"my-host"')), "hap.address",
         "IP address"),
    Case("hap-address-elsewhere", conf(hap=HAP.replace("127.0.0.1", ELSEWHERE)), "hap.address",
         f"{ELSEWHERE} is not an address of this host", child=True),
    Case("hap-port-busy", conf(hap=HAP.replace("port = 0", "port = {busy}")), "hap.port",
         "in use", child=True, busy="hap"),
    Case("setup-code-trivial", conf(hap=HAP.replace("482-91-375", "123-45-678")),
         "hap.setup_code", "too easy"),
    Case("setup-code-format", conf(hap=HAP.replace("482-91-375", "48291375")),
         "hap.setup_code", "XXX-XX-XXX"),
    Case("advertise-type", conf(hap=HAP.replace("advertise = false", 'advertise = "no"')),
         "hap.advertise", "true or false"),
    Case("advertised-address", conf(hap=HAP + 'advertised_address = "lan"\n'),
         "hap.advertised_address", "IP address"),
    Case("hap-unknown-key", conf(hap=HAP + "advertize = true\n"), "hap.advertize", "unknown key"),
    Case("hap-max-connections", conf(hap=HAP + "max_connections = 4\n"), "hap.max_connections",
         "between 8 and 1024"),
    Case("hap-max-per-address", conf(hap=HAP + "max_connections_per_address = 0\n"),
         "hap.max_connections_per_address", "between 1 and max_connections"),
    Case("standalone-type", conf(hap=HAP + "standalone = 1\n"), "hap.standalone",
         "true or false"),
    Case("standalone-ports", conf(hap=HAP.replace("port = 0", "port = 65535") + "standalone = "
         "true\n", cams=CAM + CAM.replace("Porch", "Yard")), "hap.port", "past 65535"),
    # [status]
    Case("status-address-elsewhere", conf(status=STATUS.replace("127.0.0.1", ELSEWHERE)),
         "status.address", f"{ELSEWHERE} is not an address of this host", child=True),
    Case("status-port-busy", conf(status=STATUS.replace("port = 0", "port = {busy}")),
         "status.port", "in use", child=True, busy="status"),
    Case("status-port-is-hap", conf(hap=HAP.replace("port = 0", "port = {busy}"),
         status=STATUS.replace("port = 0", "port = {busy}")), "status.port", "also [hap]'s",
         child=True, busy="free"),
    Case("status-address-name", conf(status=STATUS.replace('"127.0.0.1"', '"localhost"')),
         "status.address", "IP address"),
    Case("status-enabled-type", conf(status=STATUS + 'enabled = "no"\n'), "status.enabled",
         "true or false"),
    # [detect]
    Case("detect-threads", conf(detect="[detect]\nthreads = 0\n"), "detect.threads",
         "between 1 and 64"),
    Case("detect-model-type", conf(detect='[detect]\nmodel_type = "ssd"\n'),
         "detect.model_type", "nanodet or yolo"),
    Case("detect-fps", conf(detect="[detect]\nfps = 100\n"), "detect.fps", "between 0.1 and 30"),
    Case("detect-labels", conf(detect='[detect]\nlabels = { parcel = "box" }\n'),
         "detect.labels.parcel", "not a subject"),
    # [storage]: the URL forms, opened exactly as the vault opens them
    Case("storage-not-table", conf(top="storage = 1\n"), "storage", "must be a table"),
    Case("bucket-missing", conf(storage=f'[storage]\nrecipients = ["{KEY}"]\n'),
         "storage.bucket", "is required"),
    Case("bucket-scheme", conf(storage=storage("ftp://host/x")), "storage.bucket",
         "unsupported bucket"),
    Case("bucket-not-url", conf(storage=storage("s3://[::1/x")), "storage.bucket", "not a URL"),
    Case("bucket-s3-empty", conf(storage=storage("s3://")), "storage.bucket", "must name a bucket",
         child=True),
    Case("bucket-file-relative", conf(storage=storage("file://relative/x")), "storage.bucket",
         "file:///absolute/path", child=True),
    Case("bucket-file-no-slashes", conf(storage=storage("file:relative/x")), "storage.bucket",
         "must be absolute"),
    Case("bucket-endpoint", conf(storage=storage("s3://clips/home?endpoint=not-a-url")),
         "storage.bucket", "endpoint must be http(s)://", child=True),
    Case("bucket-endpoint-ftp", conf(storage=storage("s3://clips?endpoint=ftp://h:21")),
         "storage.bucket", "endpoint must be http(s)://"),
    Case("bucket-option", conf(storage=storage("s3://clips?colour=blue")), "storage.bucket",
         "unknown option colour"),
    Case("bucket-url-password", conf(storage=storage(f"s3://ak:{SECRET}@clips/x")),
         "storage.bucket", "must not carry credentials"),
    Case("bucket-prefix", conf(storage=storage("s3://clips/../x", 'credentials_file = "s3.env"\n')),
         "storage.bucket", "invalid object name", setup=creds("s3.env")),
    Case("bucket-flag", conf(storage=storage(S3 + "&verify_etag=maybe",
         'credentials_file = "s3.env"\n')), "storage.bucket", "true or false",
         setup=creds("s3.env")),
    Case("bucket-gs-empty", conf(storage=storage("gs:///x")), "storage.bucket",
         "must name a bucket"),
    Case("bucket-az-account", conf(storage=storage("az://c/p?account=Not_An_Account",
         'credentials_file = "az.env"\n')), "storage.bucket", "no storage account name",
         setup=az_creds),
    Case("bucket-az-no-key", conf(storage=storage("az://c/p?account=acct")),
         "storage.credentials_file", "AZURE_STORAGE_ACCOUNT_KEY"),
    # credentials files
    Case("creds-missing", conf(storage=storage(S3, 'credentials_file = "s3.env"\n')),
         "storage.credentials_file", "does not exist", child=True),
    Case("creds-0644", conf(storage=storage(S3, 'credentials_file = "s3.env"\n')),
         "storage.credentials_file", "mode 0644", setup=creds("s3.env", 0o644), child=True),
    Case("creds-0640", conf(storage=storage(S3, 'credentials_file = "s3.env"\n')),
         "storage.credentials_file", "mode 0640", setup=creds("s3.env", 0o640)),
    Case("creds-a-directory", conf(storage=storage(S3, 'credentials_file = "s3.env"\n')),
         "storage.credentials_file", "not a regular file", setup=a_dir("s3.env")),
    Case("creds-a-symlink", conf(storage=storage(S3, 'credentials_file = "s3.env"\n')),
         "storage.credentials_file", "symbolic link", setup=a_symlink),
    Case("creds-no-keys", conf(storage=storage(S3, 'credentials_file = "s3.env"\n')),
         "storage.credentials_file", "AWS_ACCESS_KEY_ID", setup=creds("s3.env", text="# none\n")),
    Case("creds-none-at-all", conf(storage=storage(S3)), "storage.credentials_file",
         "no storage.credentials_file"),
    Case("creds-on-file-bucket", conf(storage=storage("file:///srv/b", 'credentials_file = '
         '"s3.env"\n')), "storage.credentials_file", "takes no credentials",
         setup=creds("s3.env"), child=True),
    Case("creds-on-file-bucket-0644", conf(storage=storage("file:///srv/b", 'credentials_file '
         '= "s3.env"\n')), "storage.credentials_file", "takes no credentials",
         setup=creds("s3.env", 0o644)),
    Case("creds-on-file-bucket-missing", conf(storage=storage("file:///srv/b", 'credentials_'
         'file = "nope.env"\n')), "storage.credentials_file", "takes no credentials"),
    Case("recipient-not-age", conf(storage='[storage]\nbucket = "file:///srv/b"\nrecipients = '
         '["ssh-ed25519 AAAA"]\n'), "storage.recipients[0]", "age public key"),
    Case("recipients-string", conf(storage='[storage]\nbucket = "file:///srv/b"\nrecipients = '
         f'"{KEY}"\n'), "storage.recipients", "must be an array"),
    Case("retention-zero", conf(storage=storage("file:///srv/b", "retention_days = 0\n")),
         "storage.retention_days", "between 0.01 and 3650"),
    Case("spool-max-small", conf(storage=storage("file:///srv/b", "spool_max_mb = 1\n")),
         "storage.spool_max_mb", "at least 16"),
    Case("pre-roll-long", conf(storage=storage("file:///srv/b", "pre_roll_seconds = 31\n")),
         "storage.pre_roll_seconds", "between 0 and 30"),
    Case("spool-dir-a-file", conf(storage=storage("file:///srv/b", 'spool_dir = "spool"\n')),
         "storage.spool_dir", "is not a directory", setup=a_file("spool")),
    Case("storage-unknown-key", conf(storage=storage("file:///srv/b", "bukket = 1\n")),
         "storage.bukket", "unknown key"),
]


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bucket keys come from the file under test, never from the environment of the run."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)


@pytest.fixture
def ports() -> Iterator[dict[str, int]]:
    """{busy}: a port a listening socket of the test holds; {free}: one nobody holds."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free = probe.getsockname()[1]
    probe.close()
    try:
        yield {"busy": held.getsockname()[1], "free": free}
    finally:
        held.close()


def write_case(case: Case, d: Path, ports: dict[str, int]) -> Path:
    path = d / "obscura.toml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        port = ports["free"] if case.busy == "free" else ports["busy"]
        path.write_text(case.text.replace("{busy}", str(port)))
    if case.setup is not None:
        case.setup(d)
    return path


def check_message(message: str, path: Path, case: Case) -> None:
    assert str(path) in message, message
    if case.key:
        assert f"'{case.key}'" in message, message
    else:
        assert "line" in message or case.id == "toml-nesting", message
    assert case.problem in message, message
    assert SECRET not in message and ":pw@" not in message, message


def test_the_table_is_large_and_its_ids_unique() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_config_is_a_config_error(case: Case, tmp_path: Path, ports: dict[str, int]) -> None:
    path = write_case(case, tmp_path, ports)
    with pytest.raises(ConfigError) as err:
        check_runnable(load_config(path))
    check_message(str(err.value), path, case)


CHILD_CASES = [c for c in CASES if c.child]


@pytest.mark.parametrize("case", CHILD_CASES, ids=[c.id for c in CHILD_CASES])
def test_obscura_run_exits_2(case: Case, tmp_path: Path, ports: dict[str, int]) -> None:
    path = write_case(case, tmp_path, ports)
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "OBSCURA_", "XDG_"))
    }
    env["HOME"] = str(tmp_path / "home")
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    check_message(result.stderr, path, case)
    assert elapsed < 20, elapsed  # refused before anything starts (~0.5 s here)
    assert not (tmp_path / "state").is_dir() or case.id == "state-dir-a-file"


def test_a_port_taken_after_the_preflight_stops_what_started(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    """The race the preflight cannot close: [status]'s port is taken between the check and the
    bind. HAP and the camera had started: they stop, and the error names the key."""
    from bridge.service import serve

    path = tmp_path / "obscura.toml"
    path.write_text(conf(status=STATUS.replace("port = 0", f"port = {ports['busy']}")))
    config = load_config(path)
    check_host(config)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(ConfigError) as err:
        asyncio.run(serve(config))
    message = str(err.value)
    assert str(path) in message and "'status.port'" in message and "in use" in message
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not left:
            break
        time.sleep(0.05)
    assert not left, left  # the camera's threads ended with the failed start


def run_cli(args: list[str], home: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBSCURA_", "XDG_"))}
    env.update(HOME=str(home), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=60,
    )


@pytest.mark.skipif(Path("/etc/obscura/obscura.toml").exists(), reason="a system config exists")
@pytest.mark.parametrize("env_value", [None, ""], ids=["unset", "empty"])
def test_the_demo_only_when_there_is_no_configuration_file(
    tmp_path: Path, env_value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No file anywhere: the demo (shown by `obscura pair`, which binds nothing; `obscura run`
    of the demo listens on every interface and advertises, which tests never do)."""
    extra = {} if env_value is None else {"OBSCURA_CONFIG": env_value}
    out = run_cli(["pair"], tmp_path, extra)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Obscura Demo" in out.stdout and "Setup code:" in out.stdout
    # The demo's checks pass here (its state_dir is under HOME).
    from bridge.config import demo_config

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    demo = demo_config()
    assert demo.demo and demo.state_dir.is_relative_to(tmp_path)
    check_host(demo)


def test_obscura_config_naming_no_file_is_an_error_not_the_demo(tmp_path: Path) -> None:
    missing = tmp_path / "typo.toml"
    out = run_cli(["run"], tmp_path, {"OBSCURA_CONFIG": str(missing)})
    assert out.returncode == 2, out.stdout + out.stderr
    assert str(missing) in out.stderr and "$OBSCURA_CONFIG" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any directory")
def test_a_state_dir_this_user_cannot_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = tmp_path / "obscura.toml"
    for state_dir, problem in ((locked, "is not writable"), (locked / "s", "cannot create")):
        path.write_text(conf(bridge=f'[bridge]\nstate_dir = "{state_dir}"\n'))
        with pytest.raises(ConfigError, match=r"'bridge\.state_dir'.*" + problem):
            check_runnable(load_config(path))
