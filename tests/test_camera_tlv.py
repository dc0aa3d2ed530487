"""accessories.camera_tlv against hand-built bytes (HAP spec "IP Cameras" layouts)."""

from __future__ import annotations

import struct
import uuid

import pytest

from accessories.backend import VideoCapabilities, VideoRequest
from accessories.camera_tlv import (
    NO_SRTP,
    SessionCommand,
    SetupStatus,
    SRTPParams,
    SRTPSuite,
    StreamingStatus,
    parse_selected_stream_config,
    parse_setup_endpoints,
    setup_endpoints_response,
    setup_endpoints_status,
    streaming_status,
    supported_audio_config,
    supported_rtp_config,
    supported_video_config,
    video_request,
    video_resolutions,
)
from accessories.tlv8 import TLVError

SESSION = uuid.UUID("6f1b2c3d-4e5f-4061-8273-94a5b6c7d8e9").bytes
KEY = bytes(range(16))
SALT = bytes(range(100, 114))


def t(tag: int, value: bytes) -> bytes:
    assert len(value) <= 255
    return bytes([tag, len(value)]) + value


SEP = b"\x00\x00"


def srtp(suite: int = 0, key: bytes = KEY, salt: bytes = SALT) -> bytes:
    return t(1, bytes([suite])) + t(2, key) + t(3, salt)


def address(ip: str = "192.168.1.50", version: int = 0, video: int = 50000, audio: int = 50002):
    return (
        t(1, bytes([version]))
        + t(2, ip.encode())
        + t(3, struct.pack("<H", video))
        + t(4, struct.pack("<H", audio))
    )


def setup_request(addr: bytes | None = None, *, session: bytes = SESSION, audio: bool = True):
    raw = t(1, session) + t(3, addr or address()) + t(4, srtp())
    if audio:
        raw += t(5, srtp(key=KEY[::-1], salt=SALT[::-1]))
    return raw


# ---- what we advertise ----


def _parse_resolutions(raw: bytes) -> list[tuple[int, int, int]]:
    """Walk SupportedVideoStreamConfiguration by hand: 01[ 01 codec, 02 params, 03 attr..]."""
    assert raw[0] == 1
    body = raw[2 : 2 + raw[1]] if raw[1] < 255 else None
    assert body is not None and len(raw) == 2 + raw[1]
    pos, found = 0, []
    while pos < len(body):
        tag, length = body[pos], body[pos + 1]
        value = body[pos + 2 : pos + 2 + length]
        pos += 2 + length
        if tag == 3:
            assert (
                value[:2] == b"\x01\x02"
                and value[4:6] == b"\x02\x02"
                and value[8:10] == b"\x03\x01"
            )
            width, height = struct.unpack("<HH", value[2:4] + value[6:8])
            found.append((width, height, value[10]))
    return found


def test_supported_video_config_layout() -> None:
    caps = VideoCapabilities(native_width=1920, native_height=1080, native_fps=30)
    raw = supported_video_config(caps)
    params = (
        b"\x01\x01\x00" + SEP + b"\x01\x01\x01" + SEP + b"\x01\x01\x02"  # profiles
        + b"\x02\x01\x00" + SEP + b"\x02\x01\x01" + SEP + b"\x02\x01\x02"  # levels 3.1 3.2 4.0
        + b"\x03\x01\x00"  # packetization: non-interleaved
    )  # fmt: skip
    codec = t(1, b"\x00") + t(2, params)
    assert raw[2 : 2 + len(codec)] == codec
    resolutions = _parse_resolutions(raw)
    assert resolutions[0] == (1920, 1080, 30)
    assert (1280, 720, 30) in resolutions and (320, 180, 30) in resolutions
    assert resolutions[-1] == (320, 240, 15)  # Apple Watch
    assert (1600, 1200, 30) not in resolutions  # taller than the camera
    # attribute entries are separated, so repeated tags stay a list
    attr_1080 = t(3, t(1, b"\x80\x07") + t(2, b"\x38\x04") + t(3, b"\x1e"))
    assert attr_1080 + SEP + b"\x03\x0b" in raw


def test_resolutions_fit_the_camera() -> None:
    caps = VideoCapabilities(native_width=1280, native_height=720, native_fps=15)
    assert video_resolutions(caps) == [
        (1280, 720, 15), (640, 480, 15), (640, 360, 15), (480, 360, 15),
        (480, 270, 15), (320, 240, 15), (320, 180, 15),
    ]  # fmt: skip


def test_resolutions_add_odd_native_size_and_cap_fps() -> None:
    caps = VideoCapabilities(native_width=1000, native_height=500, native_fps=60)
    res = video_resolutions(caps)
    assert (1000, 500, 30) in res and (640, 360, 30) in res
    assert (640, 480, 30) in res  # fits: 480 <= 500
    assert res[-1] == (320, 240, 15)


def test_resolutions_big_and_tiny_cameras() -> None:
    big = video_resolutions(VideoCapabilities(3840, 2160, 25))
    assert (3840, 2160, 25) not in big and big[0] == (1920, 1080, 25)
    assert (1600, 1200, 25) in big
    tiny = video_resolutions(VideoCapabilities(160, 120, 10))
    assert tiny == [(160, 120, 10), (320, 240, 15)]
    with pytest.raises(ValueError):
        video_resolutions(VideoCapabilities(0, 720, 30))


def test_supported_rtp_config() -> None:
    assert supported_rtp_config() == b"\x02\x01\x00"


def test_supported_audio_config_for_a_camera_without_microphone() -> None:
    params = t(1, b"\x01") + t(2, b"\x00") + t(3, b"\x01") + SEP + t(3, b"\x02")
    codec = t(1, b"\x03") + t(2, params)  # Opus, mono, variable bitrate, 16 and 24 kHz
    assert supported_audio_config() == t(1, codec) + t(2, b"\x00")  # no comfort noise


def test_streaming_status() -> None:
    assert streaming_status(StreamingStatus.AVAILABLE) == b"\x01\x01\x00"
    assert streaming_status(StreamingStatus.IN_USE) == b"\x01\x01\x01"
    assert streaming_status(StreamingStatus.UNAVAILABLE) == b"\x01\x01\x02"


# ---- SetupEndpoints ----


def test_parse_setup_endpoints_ipv4() -> None:
    req = parse_setup_endpoints(setup_request())
    assert req.session_id == SESSION
    assert not req.ipv6
    assert req.controller_address == "192.168.1.50"
    assert (req.video_port, req.audio_port) == (50000, 50002)
    assert req.video_srtp == SRTPParams(SRTPSuite.AES_CM_128_HMAC_SHA1_80, KEY, SALT)
    assert req.audio_srtp.key == KEY[::-1]


def test_parse_setup_endpoints_ipv6_and_missing_audio() -> None:
    raw = setup_request(address("fd00::12", version=1), audio=False)
    req = parse_setup_endpoints(raw)
    assert req.ipv6 and req.controller_address == "fd00::12"
    assert req.audio_srtp == NO_SRTP


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (t(3, address()) + t(4, srtp()), "missing session id"),
        (setup_request(session=b"short"), "session id must be 16 bytes"),
        (t(1, SESSION) + t(4, srtp()), "missing controller address"),
        (setup_request(address("not-an-ip")), "not an IP address"),
        (setup_request(address("::1", version=0)), "does not match ip version 0"),
        (setup_request(address(version=7)), "unknown ip version 7"),
        (setup_request(address(video=0)), "video port is 0"),
        (t(1, SESSION) + t(3, address()), "missing video srtp"),
        (t(1, SESSION) + t(3, address()) + t(4, srtp(key=KEY[:8])), "16-byte key"),
        (t(1, SESSION) + t(3, address()) + t(4, srtp(suite=9)), "unknown SRTP crypto suite 9"),
        (setup_request()[:-3], "TLV truncated"),
    ],
)
def test_parse_setup_endpoints_errors(raw: bytes, message: str) -> None:
    with pytest.raises(TLVError, match=message):
        parse_setup_endpoints(raw)


@pytest.mark.parametrize(
    ("ip", "version", "kind"),
    [
        ("255.255.255.255", 0, "broadcast"),
        ("224.0.0.251", 0, "multicast"),
        ("239.255.255.250", 0, "multicast"),
        ("0.0.0.0", 0, "unspecified"),
        ("0.1.2.3", 0, "unspecified"),
        ("169.254.1.1", 0, "link-local"),
        ("240.0.0.1", 0, "reserved"),
        ("::", 1, "unspecified"),
        ("ff02::fb", 1, "multicast"),
        ("ff05::1:3", 1, "multicast"),
        ("fe80::1", 1, "link-local"),
        ("fe80::1%eth0", 1, "link-local"),
        ("::ffff:224.0.0.251", 1, "multicast"),
        ("::ffff:255.255.255.255", 1, "broadcast"),
    ],
)
def test_setup_endpoints_refuses_addresses_that_are_not_one_host(
    ip: str, version: int, kind: str
) -> None:
    with pytest.raises(TLVError, match=f"not one host's unicast address .*{kind}"):
        parse_setup_endpoints(setup_request(address(ip, version=version)))


@pytest.mark.parametrize(
    ("ip", "version"),
    [
        ("127.0.0.1", 0),  # a controller on this host (the tests)
        ("10.0.0.255", 0),  # may be a host in a /16: subnet broadcasts are not knowable here
        ("192.168.1.50", 0),
        ("::1", 1),
        ("fd00::12", 1),
        ("2001:db8::7", 1),
        ("::ffff:192.168.1.50", 1),
    ],
)
def test_setup_endpoints_accepts_unicast_addresses(ip: str, version: int) -> None:
    assert parse_setup_endpoints(setup_request(address(ip, version=version))).controller_address


def test_setup_endpoints_response_bytes() -> None:
    req = parse_setup_endpoints(setup_request())
    raw = setup_endpoints_response(
        req,
        local_address="192.168.1.2",
        video_port=40000,
        audio_port=50002,
        video_ssrc=0x11223344,
        audio_ssrc=0x55667788,
    )
    ours = t(1, b"\x00") + t(2, b"192.168.1.2") + t(3, b"\x40\x9c") + t(4, b"\x52\xc3")
    expected = (
        t(1, SESSION)
        + t(2, b"\x00")
        + t(3, ours)
        + t(4, srtp())
        + t(5, srtp(key=KEY[::-1], salt=SALT[::-1]))
        + t(6, b"\x44\x33\x22\x11")
        + t(7, b"\x88\x77\x66\x55")
    )
    assert raw == expected


def test_setup_endpoints_status_only() -> None:
    assert setup_endpoints_status(SetupStatus.BUSY, SESSION) == t(1, SESSION) + b"\x02\x01\x01"
    assert setup_endpoints_status(SetupStatus.ERROR) == b"\x02\x01\x02"


# ---- SelectedRTPStreamConfiguration ----


def control(command: int, session: bytes = SESSION) -> bytes:
    return t(1, t(1, session) + t(2, bytes([command])))


def video_params(
    *, width: int = 1280, height: int = 720, fps: int = 30, bitrate: int = 299,
    interval: float = 0.5, mtu: int | None = 1378, profile: int = 1, level: int = 2,
    codec: int = 0, full: bool = True,
) -> bytes:  # fmt: skip
    attrs = t(1, struct.pack("<H", width)) + t(2, struct.pack("<H", height)) + t(3, bytes([fps]))
    rtp = t(3, struct.pack("<H", bitrate)) + t(4, struct.pack("<f", interval))
    if full:
        rtp = t(1, b"\x63") + t(2, struct.pack("<I", 0xA1B2C3D4)) + rtp
    if mtu is not None:
        rtp += t(5, struct.pack("<H", mtu))
    raw = t(3, attrs) + t(4, rtp)
    if full:
        params = t(1, bytes([profile])) + t(2, bytes([level])) + t(3, b"\x00") + t(4, b"\x00")
        raw = t(1, bytes([codec])) + t(2, params) + raw
    return t(2, raw)


AUDIO = t(
    3,
    t(1, b"\x03")
    + t(2, t(1, b"\x01") + t(2, b"\x00") + t(3, b"\x01") + t(4, b"\x14"))
    + t(
        3, t(1, b"\x6e") + t(2, b"\x01\x02\x03\x04") + t(3, b"\x18\x00") + t(4, b"\x00\x00\xa0\x40")
    )
    + t(4, b"\x00"),
)


def test_parse_start() -> None:
    cfg = parse_selected_stream_config(control(1) + video_params() + AUDIO)
    assert cfg.session_id == SESSION
    assert cfg.command is SessionCommand.START
    assert cfg.audio_present
    v = cfg.video
    assert v is not None
    assert (v.codec, v.profile, v.level, v.packetization_mode) == (0, 1, 2, 0)
    assert (v.width, v.height, v.fps) == (1280, 720, 30)
    assert (v.payload_type, v.ssrc, v.max_bitrate_kbps, v.max_mtu) == (99, 0xA1B2C3D4, 299, 1378)
    assert v.rtcp_interval == 0.5
    assert video_request(v, ipv6=False) == VideoRequest(
        width=1280, height=720, fps=30, max_bitrate_kbps=299, payload_type=99,
        max_mtu=1378, rtcp_interval=0.5, profile="main", level="4.0",
    )  # fmt: skip


def test_start_defaults_mtu_by_address_family() -> None:
    cfg = parse_selected_stream_config(control(1) + video_params(mtu=None, profile=2, level=0))
    assert video_request(cfg.video, ipv6=True).max_mtu == 1228
    request = video_request(cfg.video, ipv6=False)
    assert (request.max_mtu, request.profile, request.level) == (1378, "high", "3.1")


def test_reconfigure_changes_only_what_it_carries() -> None:
    base = VideoRequest(width=1280, height=720, fps=30, max_bitrate_kbps=299, payload_type=99)
    raw = control(4) + video_params(width=640, height=360, fps=15, bitrate=132, interval=0.0,
                                    mtu=None, full=False)  # fmt: skip
    cfg = parse_selected_stream_config(raw)
    assert cfg.command is SessionCommand.RECONFIGURE and not cfg.audio_present
    request = video_request(cfg.video, ipv6=False, base=base)
    assert (request.width, request.height, request.fps) == (640, 360, 15)
    assert request.max_bitrate_kbps == 132
    assert request.rtcp_interval == base.rtcp_interval  # 0 means "not given"
    assert (request.payload_type, request.max_mtu, request.profile) == (99, 1378, "main")


def test_parse_end_and_suspend() -> None:
    end = parse_selected_stream_config(control(0))
    assert end.command is SessionCommand.END and end.video is None
    assert parse_selected_stream_config(control(2)).command is SessionCommand.SUSPEND
    assert parse_selected_stream_config(control(3)).command is SessionCommand.RESUME


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "missing session control"),
        (control(9), "unknown command 9"),
        (control(1, session=b"x" * 15), "session id must be 16 bytes"),
        (t(1, t(1, SESSION)), "missing command"),
        (control(1) + t(2, t(4, t(4, b"\x00\x00"))), "4-byte float"),
        (control(1)[:-1], "TLV truncated"),
    ],
)
def test_parse_selected_errors(raw: bytes, message: str) -> None:
    with pytest.raises(TLVError, match=message):
        parse_selected_stream_config(raw)


@pytest.mark.parametrize(
    ("video", "message"),
    [
        (video_params(codec=1), "unsupported video codec 1"),
        (video_params(profile=5), "unknown H.264 profile 5"),
        (video_params(level=3), "unknown H.264 level 3"),
        (video_params(width=0), "missing or zero video"),
        (video_params(full=False, bitrate=0), "missing or zero video"),
        (video_params(width=65535, height=65535), "larger than any size offered"),
        (video_params(width=1921, height=1080), "larger than any size offered"),
        (video_params(width=1280, height=1201), "larger than any size offered"),
    ],
)
def test_start_request_errors(video: bytes, message: str) -> None:
    cfg = parse_selected_stream_config(control(1) + video)
    with pytest.raises(TLVError, match=message):
        video_request(cfg.video, ipv6=False)


def test_sizes_and_frame_rates_stay_within_what_we_offer() -> None:
    cfg = parse_selected_stream_config(control(1) + video_params(width=1920, height=1200, fps=30))
    assert (video_request(cfg.video, ipv6=False).width, cfg.video and cfg.video.fps) == (1920, 30)
    fast = parse_selected_stream_config(control(1) + video_params(width=640, height=360, fps=255))
    assert video_request(fast.video, ipv6=False).fps == 30  # capped, not refused
    base = VideoRequest(width=640, height=360, fps=15, max_bitrate_kbps=300)
    huge = parse_selected_stream_config(control(4) + video_params(width=4096, height=2160))
    with pytest.raises(TLVError, match="larger than any size offered"):
        video_request(huge.video, ipv6=False, base=base)


def test_start_without_video_is_an_error() -> None:
    cfg = parse_selected_stream_config(control(1))
    with pytest.raises(TLVError, match="missing video parameters"):
        video_request(cfg.video, ipv6=False)
