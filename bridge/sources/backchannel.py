"""Talk-back targets: the `BackChannel` interface, and a camera's ONVIF RTSP back channel.

A back channel takes PCM (any rate, mono or stereo, int16 or float) while someone talks and
plays it on a camera's speaker. bridge/live/talkback.py knows only the `BackChannel` Protocol
(open, send, close, codec, sample_rate), so another target (a SIP intercom, a camera's HTTP
audio API) would be one more module beside this one.

`OnvifBackChannel` talks to a camera the ONVIF way (ONVIF Streaming Specification §5.3):
1. OPTIONS, then DESCRIBE with `Require: www.onvif.org/ver20/backchannel`. A camera that does
   not know the option answers 551 Option not supported; one that knows it lists the back
   channel in its SDP as an `m=audio` section marked `a=sendonly` (the client sends; its other
   streams are `recvonly`). We take its first payload format we can send: G.711 µ-law or A-law
   (PCMU/PCMA at 8 kHz, what nearly every camera offers) or AAC (mpeg4-generic, AAC-hbr).
   A G.726 or other back channel gives an error naming the codec.
2. SETUP of that one stream only, RTP/AVP/TCP interleaved: the audio rides the RTSP connection,
   so it passes NAT and firewalls and needs no UDP ports; PLAY (both with the Require header,
   as ONVIF asks). The camera's video is never set up, so nothing comes back but RTCP.
3. RTP packets of the packet time the SDP asks for (`a=ptime`, else 20 ms; AAC: one 1024-sample
   access unit per packet), timestamps at the codec's clock (backchannel_encode.py).
4. A keepalive inside the session timeout (`Session: id;timeout=N`, 60 s when not given): every
   N/2 s a GET_PARAMETER (OPTIONS when the camera does not list GET_PARAMETER), as many cameras
   do not count RTP from the client as activity. It also finds a camera that froze or lost its
   link without a reset: no answer within `timeout` ends the channel.
5. TEARDOWN on close (bounded: a dead camera does not hold it up), then the connection closes.

Encoding runs on the media executor when one is given (the bridge's), else in asyncio's default
executor: never on the loop. Errors are `BackChannelError` with one line that says what the
camera did and never carries credentials; a camera that dies while we talk ends the channel
(the next `send` raises) instead of blocking the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urljoin

import numpy as np

from bridge.config import CameraConfig
from bridge.media.executor import MediaBusy, MediaExecutor
from bridge.sources.backchannel_encode import SUPPORTED, BackChannelEncoder
from bridge.sources.rtsp_client import RtspConnection, RtspError, RtspStatusError

log = logging.getLogger(__name__)

REQUIRE = {"Require": "www.onvif.org/ver20/backchannel"}
DEFAULT_SESSION_TIMEOUT = 60
STATIC_PAYLOADS = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
T = TypeVar("T")


class BackChannelError(Exception):
    """Opening or talking failed: one line, no credentials."""


class BackChannel(Protocol):
    """Where talk-back goes. `send` may be called only between `open` and `close`."""

    @property
    def codec(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    async def open(self) -> None:
        """Connect and get ready to play; raises BackChannelError."""

    async def send(self, pcm: np.ndarray, rate: int) -> None:
        """Play `pcm` (int16 or float, (n,) or (channels, n)) at `rate` Hz; raises
        BackChannelError once the channel is gone."""

    async def close(self) -> None:
        """Stop and release; idempotent, never raises."""


@dataclass(frozen=True, slots=True)
class BackChannelInfo:
    """The back channel a camera's SDP offers, as we will use it."""

    codec: str  # "PCMU" | "PCMA" | "MPEG4-GENERIC"
    payload_type: int
    clock_rate: int
    channels: int
    control: str  # absolute URL to SETUP
    aggregate: str  # absolute URL of the session: PLAY, TEARDOWN
    ptime_ms: int = 20
    fmtp: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        name = {"PCMU": "G.711 µ-law", "PCMA": "G.711 A-law", "MPEG4-GENERIC": "AAC"}
        layout = "mono" if self.channels == 1 else f"{self.channels} channels"
        return f"{name.get(self.codec, self.codec)} {self.clock_rate} Hz {layout}"


class NoBackChannel(BackChannelError):
    """The camera has no back channel we can use (none offered, or in a codec we lack)."""


def parse_backchannel(sdp: str, base_url: str) -> BackChannelInfo:
    """The first usable `a=sendonly` audio format in `sdp`; NoBackChannel says why not."""
    sections: list[list[str]] = [[]]
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    offered: list[str] = []
    aggregate = _control_url(_attr(sections[0], "control"), base_url)
    for lines in sections[1:]:
        media = lines[0][2:].split()
        attrs = [ln[2:] for ln in lines if ln.startswith("a=")]
        if len(media) < 4 or media[0] != "audio" or "sendonly" not in attrs:
            continue
        info = _pick_format(media[3:], attrs, base_url, aggregate, offered)
        if info is not None:
            return info
    if offered:
        raise NoBackChannel(
            f"its back channel wants {', '.join(offered)}; Obscura sends G.711 or AAC"
        )
    raise NoBackChannel("it offers no back channel (no a=sendonly audio in its SDP)")


def _attr(lines: list[str], name: str) -> str:
    prefix = f"a={name}:"
    return next((ln[len(prefix) :].strip() for ln in lines if ln.startswith(prefix)), "")


def _control_url(control: str, base_url: str) -> str:
    """An SDP control attribute as an absolute URL (RFC 2326 C.1.1: relative to the base)."""
    if control in ("", "*"):
        return base_url
    if "://" in control:
        return control
    return urljoin(base_url if base_url.endswith("/") else base_url + "/", control)


def _aac_channels(config: str, default: int) -> int:
    """The channel configuration of an AudioSpecificConfig in hex (bits 9-12 of AAC-LC's)."""
    try:
        value = int(config[:4], 16) if len(config) >= 4 else -1
    except ValueError:
        return default
    channels = (value >> 3) & 0x0F if value >= 0 else 0
    return channels if channels in (1, 2) else default


def _pick_format(
    formats: list[str], attrs: list[str], base_url: str, aggregate: str, offered: list[str]
) -> BackChannelInfo | None:
    rtpmap: dict[int, tuple[str, int, int]] = {}
    fmtp: dict[int, dict[str, str]] = {}
    control, ptime = "", 20
    for attr in attrs:
        key, _, value = attr.partition(":")
        if key == "rtpmap":
            pt, _, spec = value.partition(" ")
            name, rate, *chans = spec.strip().split("/")
            with contextlib.suppress(ValueError):
                rtpmap[int(pt)] = (name.upper(), int(rate), int(chans[0]) if chans else 1)
        elif key == "fmtp":
            pt, _, params = value.partition(" ")
            items = (p.strip().partition("=") for p in params.split(";") if p.strip())
            with contextlib.suppress(ValueError):
                fmtp[int(pt)] = {k.strip().lower(): v.strip() for k, _, v in items}
        elif key == "control":
            control = value.strip()
        elif key == "ptime":
            with contextlib.suppress(ValueError):
                ptime = max(10, min(int(float(value)), 100))
    for fmt in formats:
        try:
            pt = int(fmt)
        except ValueError:
            continue
        codec, rate, channels = rtpmap.get(pt, (*STATIC_PAYLOADS.get(pt, ("?", 0)), 1))
        params = fmtp.get(pt, {})
        usable = codec in SUPPORTED and rate > 0
        if codec == "MPEG4-GENERIC":  # AAC-hbr: 13-bit sizes, 3-bit indexes (RFC 3640 3.3.6)
            usable = (
                usable
                and params.get("mode", "").lower() == "aac-hbr"
                and params.get("sizelength", "13") == "13"
                and params.get("indexlength", "3") == "3"
            )
            channels = _aac_channels(params.get("config", ""), channels)
        if not usable:
            offered.append(f"{codec}/{rate}" if rate else f"payload type {pt}")
            continue
        url = _control_url(control, base_url)
        return BackChannelInfo(codec, pt, rate, channels, url, aggregate, ptime, params)
    return None


def _content_base(response_headers: Any, request_url: str) -> str:
    for name in ("content-base", "content-location"):
        value = response_headers.get(name)
        if value:
            return str(value)
    return request_url


async def _describe(conn: RtspConnection) -> BackChannelInfo:
    try:
        options = await conn.request("OPTIONS")
        conn.public = options.get("public") or ""
        response = await conn.request("DESCRIBE", headers={"Accept": "application/sdp", **REQUIRE})
    except RtspStatusError as exc:
        if exc.status == 551:
            raise NoBackChannel(
                "it does not support ONVIF back channels (551 Option not supported)"
            ) from None
        raise BackChannelError(str(exc)) from None
    except RtspError as exc:
        raise BackChannelError(str(exc)) from None
    base = _content_base(response, conn.target.url)
    return parse_backchannel(response.body.decode("utf-8", "replace"), base)


async def probe_backchannel(url: str, timeout: float = 4.0) -> tuple[BackChannelInfo | None, str]:
    """(the camera's back channel, None when it has none we can use; a one-line reason).
    One DESCRIBE: nothing is set up, nothing plays."""
    conn = RtspConnection(url, timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            await conn.connect()
            info = await _describe(conn)
        return info, info.describe()
    except NoBackChannel as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"no answer within {timeout:g} s"
    except (BackChannelError, RtspError) as exc:
        return None, str(exc)
    finally:
        await conn.close()


async def probe_talkback(
    cam: CameraConfig, timeout: float = 4.0
) -> tuple[BackChannelInfo | None, str]:
    """For `talkback = "auto"` at start (before the accessory is built, as a Speaker service
    must be there from the start): the camera's back channel or None, and a one-line reason."""
    if cam.talkback == "off":
        return None, "talkback = false in its configuration"
    if cam.source.split(":", 1)[0].lower() not in ("rtsp", "rtsps"):
        return None, "only RTSP cameras have an ONVIF back channel"
    return await probe_backchannel(cam.source, timeout)


class OnvifBackChannel:
    """A camera's ONVIF back channel over RTSP (TCP interleaved). Not reusable once closed."""

    def __init__(
        self, url: str, *, media: MediaExecutor | None = None, timeout: float = 5.0
    ) -> None:
        self._conn = RtspConnection(url, timeout=timeout)
        self._media = media
        self.info: BackChannelInfo | None = None
        self.session: str | None = None
        self.session_timeout = DEFAULT_SESSION_TIMEOUT
        self.keepalives = 0
        self.dropped_busy = 0  # chunks the media pool had no room for
        self._channel = 0
        self._encoder: BackChannelEncoder | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def display_url(self) -> str:
        return self._conn.display_url

    @property
    def codec(self) -> str:
        return self.info.codec if self.info else ""

    @property
    def sample_rate(self) -> int:
        return self.info.clock_rate if self.info else 0

    @property
    def packets_sent(self) -> int:
        return self._encoder.packets if self._encoder else 0

    @property
    def closed_reason(self) -> str | None:
        return self._conn.closed_reason

    async def open(self) -> None:
        if self._closed or self.info is not None:
            raise BackChannelError("a back channel opens once")
        try:
            await self._conn.connect()
        except RtspError as exc:
            raise BackChannelError(str(exc)) from None
        try:
            self.info = info = await _describe(self._conn)
            await self._setup(info)
        except BaseException:
            await self.close()
            raise
        self._encoder = BackChannelEncoder(
            info.codec, info.payload_type, info.clock_rate, info.channels, info.ptime_ms
        )
        self._keepalive = asyncio.create_task(self._keep_alive(), name="backchannel-keepalive")

    async def _setup(self, info: BackChannelInfo) -> None:
        transport = "RTP/AVP/TCP;unicast;interleaved=0-1"
        try:
            reply = await self._conn.request(
                "SETUP", info.control, {"Transport": transport, **REQUIRE}
            )
            session = reply.get("session")
            if not session:
                raise BackChannelError(f"SETUP {self.display_url}: no Session in the answer")
            sid, *params = (p.strip() for p in session.split(";"))
            self.session = sid
            for param in params:
                key, _, value = param.partition("=")
                if key.strip().lower() == "timeout" and value.strip().isdigit():
                    self.session_timeout = max(2, int(value))
            for part in (reply.get("transport") or "").split(";"):
                key, _, value = part.partition("=")
                if key.strip().lower() == "interleaved" and value:
                    self._channel = int(value.split("-")[0])
            headers = {"Session": sid, "Range": "npt=0.000-", **REQUIRE}
            await self._conn.request("PLAY", info.aggregate, headers)
        except RtspStatusError as exc:
            raise BackChannelError(f"the camera refused its back channel: {exc}") from None
        except (RtspError, ValueError) as exc:
            raise BackChannelError(str(exc)) from None

    async def _keep_alive(self) -> None:
        public = self._conn.public.upper()
        method = "GET_PARAMETER" if "GET_PARAMETER" in public else "OPTIONS"
        interval = self.session_timeout / 2
        while not self._conn.closed:
            await asyncio.sleep(interval)
            try:
                await self._conn.request(method, headers={"Session": self.session or ""})
                self.keepalives += 1
            except RtspStatusError as exc:
                if method == "GET_PARAMETER":
                    method = "OPTIONS"  # listed but refused: OPTIONS keeps sessions alive too
                    continue
                log.debug("back channel %s: keepalive refused: %s", self.display_url, exc)
            except RtspError as exc:  # the connection has ended: the next send says why
                log.debug("back channel %s: keepalive failed: %s", self.display_url, exc)
                return

    async def send(self, pcm: np.ndarray, rate: int) -> None:
        encoder = self._encoder
        if encoder is None or self._closed:
            raise BackChannelError(f"back channel {self.display_url} is not open")
        if self._conn.closed:
            raise BackChannelError(f"back channel {self.display_url}: {self.closed_reason}")
        try:
            packets = await self._run(encoder.encode, pcm, rate, time.monotonic())
        except MediaBusy:
            self.dropped_busy += 1  # a moment of silence beats ending the talk
            return
        if packets:
            try:
                await self._conn.send_interleaved(self._channel, packets)
            except RtspError as exc:
                raise BackChannelError(str(exc)) from None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._media is not None:
            return await self._media.run(fn, *args, what="backchannel-encode")
        return await asyncio.to_thread(fn, *args)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._keepalive = self._keepalive, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.session and not self._conn.closed:
                with contextlib.suppress(RtspError, TimeoutError):
                    async with asyncio.timeout(2.0):
                        aggregate = self.info.aggregate if self.info else None
                        await self._conn.request("TEARDOWN", aggregate, {"Session": self.session})
        finally:  # even when cancelled meanwhile: no socket or reader task left behind
            await self._conn.close()
