#!/usr/bin/python3
"""A real RTSP camera for tests and benchmarks: GStreamer's gst-rtsp-server on loopback.

Run it with Debian's interpreter (the GObject bindings are Debian packages, not in the venv):

    /usr/bin/python3 tests/peers/rtsp_server.py --port 8554 --mount /cam --width 1280 --height 720

It prints ``READY rtsp://127.0.0.1:PORT/MOUNT`` on stdout once the socket listens (``--port 0``
picks a free port and the line tells which), logs to stderr, and exits 0 on SIGTERM/SIGINT.

Sources:
- default: ``videotestsrc`` (live, ``--pattern``: default a moving ball, so P-frames are not empty
  yet cost almost nothing; ``--pattern "smpte horizontal-speed=4"`` gives a camera-like bitrate).
- ``--file PATH``: the file is decoded, scaled to --width/--height at --fps and re-encoded. It is
  played by a separate always-running pipeline that loops by seeking back to 0 on EOS and hands
  raw frames to the RTSP media through ``intervideosink``/``intervideosrc``. The media therefore
  stays live (one timeline for every client) and never sees EOS, which gst-rtsp-server would
  otherwise turn into the end of every client's session.

Sound (``--audio``): a second stream, ``pay1``, carries a sine tone of ``--tone-hz`` from
``audiotestsrc`` (live unless --file, on the same pipeline clock as the video, so the RTP
timestamps of both streams and their RTCP sender reports map to one timeline, as a camera's
do), encoded as AAC
(``avenc_aac`` + ``rtpmp4gpay``, mpeg4-generic), G.711 A-law or µ-law (``rtppcmapay`` /
``rtppcmupay``, 8 kHz), Opus (``rtpopuspay``), MP3 (``rtpmpapay``) or a codec the bridge cannot
use (``siren``: an RTP payload FFmpeg's RTSP demuxer does not know).

A camera you can talk to (``--backchannel pcmu|pcma|aac``): an ONVIF server
(``RTSPOnvifServer`` + ``RTSPOnvifMediaFactory``) whose SDP also offers a back channel
(``a=sendonly``) to clients that send ``Require: www.onvif.org/ver20/backchannel``. What
arrives there is depayloaded, decoded and appended to ``--backchannel-file`` as raw S16LE mono at
the back channel's rate (8 kHz for G.711, ``--backchannel-rate`` for AAC), so a test can check
what the camera heard. Without a back channel a client's Require header gets gst-rtsp-server's
551 Option not supported (its ONVIF server answers the same when it has no back channel).
``--user``/``--password`` make the camera ask for credentials (``--auth digest`` or ``basic``).
``--log-requests`` logs every RTSP request's method to stderr (``rtsp_server: request
TEARDOWN``), so a test can see what a client sent. ``--session-timeout N`` expires a session N s
after its last request.

The media is shared: one encoder for all clients, as a real camera has (not with a back channel:
each talking client gets its own media, as gst-rtsp-server's ONVIF example does).
``config-interval=-1`` repeats SPS/PPS before every IDR so a client that joins mid-stream can
start at the next keyframe.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

INTER_CHANNEL = "obscura-file"


def log(msg: str) -> None:
    print(f"rtsp_server: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1 (0: any free)")
    p.add_argument("--mount", default="/cam", help="mount point, e.g. /cam")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--gop", type=int, default=30, help="x264enc key-int-max (frames)")
    p.add_argument("--bitrate", type=int, default=2000, help="x264enc bitrate in kbit/s")
    p.add_argument("--profile", default="main", choices=["baseline", "main", "high"])
    p.add_argument(
        "--pattern",
        default="ball",
        help="videotestsrc pattern, optionally with more videotestsrc properties (no --file). "
        "'ball' (default) is nearly free to encode (~90 kbit/s); "
        "'smpte horizontal-speed=4' scrolls the bars and reaches --bitrate like a real camera",
    )
    p.add_argument("--file", help="serve this video file (looped) instead of a test pattern")
    p.add_argument("--audio", choices=sorted(AUDIO_CHAINS), help="also serve a tone (pay1)")
    p.add_argument("--tone-hz", type=float, default=440.0, help="the tone's frequency")
    p.add_argument("--audio-rate", type=int, default=16000, help="sample rate (G.711: 8000)")
    p.add_argument("--audio-channels", type=int, default=1)
    p.add_argument(
        "--backchannel", choices=sorted(BACKCHANNEL_CHAINS), help="offer an ONVIF back channel"
    )
    p.add_argument("--backchannel-file", help="append what the back channel hears (S16LE mono)")
    p.add_argument("--backchannel-rate", type=int, default=16000, help="AAC back channel rate")
    p.add_argument("--user", help="require these credentials (with --password)")
    p.add_argument("--password", default="")
    p.add_argument("--auth", choices=["digest", "basic"], default="digest")
    p.add_argument("--log-requests", action="store_true", help="log each request's method")
    p.add_argument(
        "--session-timeout", type=int, help="sessions expire after this many idle seconds"
    )
    p.add_argument("--no-loop", action="store_true", help="with --file: hold the last frame")
    p.add_argument(
        "--protocols",
        default="tcp",
        choices=["tcp", "udp", "tcp+udp"],
        help="RTP lower transports offered. UDP sockets bind to 127.0.0.1 via an address pool.",
    )
    p.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="quit when stdin closes (the spawning test process died): no orphan servers",
    )
    a = p.parse_args(argv)
    if not a.mount.startswith("/"):
        a.mount = "/" + a.mount
    return a


def encoder_chain(a: argparse.Namespace) -> str:
    # zerolatency: no B-frames, no lookahead -> frames leave the encoder as they arrive, like an
    # IP camera. superfast is cheap enough for several 720p cameras on two cores and, unlike
    # ultrafast (no CABAC), really produces Main profile. No scene-cut keyframes: a camera's
    # GOP is fixed, and busy test patterns would otherwise get a keyframe every few frames.
    return (
        f"x264enc tune=zerolatency speed-preset=superfast key-int-max={a.gop} "
        "option-string=scenecut=0 "
        f"bitrate={a.bitrate} ! video/x-h264,profile={a.profile} "
        "! rtph264pay name=pay0 pt=96 config-interval=-1"
    )


# Encoder + RTP payloader per --audio; the payloader is pay1 (pt 97 when dynamic).
AUDIO_CHAINS = {
    "aac": "avenc_aac ! rtpmp4gpay name=pay1 pt=97",
    "alaw": "alawenc ! rtppcmapay name=pay1",
    "mulaw": "mulawenc ! rtppcmupay name=pay1",
    "opus": "opusenc ! rtpopuspay name=pay1 pt=97",
    "mp3": "lamemp3enc ! rtpmpapay name=pay1",
    "siren": "sirenenc ! rtpsirenpay name=pay1 pt=97",
}


def audio_chain(a: argparse.Namespace) -> str:
    if not a.audio:
        return ""
    rate = 8000 if a.audio in ("alaw", "mulaw") else a.audio_rate
    rate = 16000 if a.audio == "siren" else rate
    rate = 48000 if a.audio == "opus" else rate
    # With --file the video comes from intervideosrc, which is not a live source: a live tone
    # beside it left the media unprepared (every PLAY got a 5xx). Not live, the tone is paced by
    # the same sinks' clock as the video, and both still start at running time 0.
    live = "false" if a.file else "true"
    return (
        f" audiotestsrc is-live={live} wave=sine freq={a.tone_hz:g} volume=0.5 "
        f"! audio/x-raw,rate={rate},channels={a.audio_channels} ! audioconvert "
        f"! {AUDIO_CHAINS[a.audio]}"
    )


# RTP caps the back channel accepts + depayloader and decoder, per --backchannel. Only string
# fields of the caps reach the SDP's fmtp line, hence the (string) casts.
BACKCHANNEL_CHAINS = {
    "pcmu": (
        "application/x-rtp,media=audio,payload=0,clock-rate=8000,encoding-name=PCMU",
        "rtppcmudepay ! mulawdec",
    ),
    "pcma": (
        "application/x-rtp,media=audio,payload=8,clock-rate=8000,encoding-name=PCMA",
        "rtppcmadepay ! alawdec",
    ),
    "aac": (
        "application/x-rtp,media=audio,payload=96,clock-rate={rate},"
        "encoding-name=MPEG4-GENERIC,mode=(string)AAC-hbr,config=(string){config},"
        "sizelength=(string)13,indexlength=(string)3,indexdeltalength=(string)3,"
        "streamtype=(string)5,profile-level-id=(string)1",
        "rtpmp4gdepay ! avdec_aac",
    ),
}
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


def backchannel_launch(a: argparse.Namespace) -> str:
    caps, decode = BACKCHANNEL_CHAINS[a.backchannel]
    # AudioSpecificConfig of AAC-LC mono at the rate: 5 bits object type 2, 4 bits rate index,
    # 4 bits channel configuration 1, 3 bits zero.
    asc = (2 << 11) | (AAC_RATES.index(a.backchannel_rate) << 7) | (1 << 3)
    caps = caps.format(rate=a.backchannel_rate, config=f"{asc:04x}")
    out = a.backchannel_file or "/dev/null"
    location = out.replace("\\", "\\\\").replace('"', '\\"')
    # async=false: the back channel has no data (so nothing prerolls) until the client talks.
    # unbuffered: every buffer reaches the file as it is decoded, so a test reads it live.
    return (
        f'( capsfilter caps="{caps}" name=depay_backchannel ! {decode} ! audioconvert '
        "! audio/x-raw,format=S16LE,channels=1 "
        f'! filesink location="{location}" append=true buffer-mode=unbuffered '
        "async=false sync=false )"
    )


def raw_caps(a: argparse.Namespace) -> str:
    return f"video/x-raw,width={a.width},height={a.height},framerate={a.fps}/1"


def media_launch(a: argparse.Namespace) -> str:
    if a.file:
        # intervideosrc is live and timestamps at the caps' rate; it repeats the last frame when
        # the producer stalls (e.g. during the loop seek) instead of stopping the stream.
        src = f"intervideosrc channel={INTER_CHANNEL} timeout=18446744073709551615"
        video = f"{src} ! videoconvert ! {raw_caps(a)},format=I420 ! {encoder_chain(a)}"
    else:
        src = f"videotestsrc is-live=true pattern={a.pattern}"
        video = f"{src} ! {raw_caps(a)} ! {encoder_chain(a)}"
    launch = f"( {video}{audio_chain(a)} )"
    if a.backchannel:
        # A talking client may SETUP only the back channel (as ours does): the streams it did
        # not set up stay unlinked, and a payloader's not-linked would otherwise stop the whole
        # media (back channel included) as soon as its source pushes. The tees swallow it.
        launch = launch.replace(" ! rtp", " ! tee allow-not-linked=true ! rtp")
    return launch


class FileProducer:
    """Decodes --file in real time into the inter channel, looping on EOS."""

    def __init__(self, a: argparse.Namespace, loop: GLib.MainLoop) -> None:
        location = a.file.replace("\\", "\\\\").replace('"', '\\"')
        desc = (
            f'filesrc location="{location}" ! decodebin ! videoconvert ! videoscale '
            f"! videorate ! {raw_caps(a)},format=I420 "
            f"! intervideosink channel={INTER_CHANNEL} sync=true"
        )
        self.pipeline = Gst.parse_launch(desc)
        self.loop_file = not a.no_loop
        self.mainloop = loop
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self._on_message)

    def start(self) -> None:
        if self.pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise RuntimeError("file pipeline failed to start")

    def stop(self) -> None:
        self.pipeline.set_state(Gst.State.NULL)

    def _on_message(self, _bus: Gst.Bus, msg: Gst.Message) -> None:
        if msg.type == Gst.MessageType.EOS:
            if self.loop_file:
                ok = self.pipeline.seek_simple(
                    Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0
                )
                if not ok:
                    log("loop seek failed; holding the last frame")
            else:
                log("file ended; holding the last frame")
        elif msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            log(f"file pipeline error: {err.message} ({dbg})")
            self.mainloop.quit()


def add_auth(
    server: GstRtspServer.RTSPServer, factory: GstRtspServer.RTSPMediaFactory, a: argparse.Namespace
) -> None:
    """Only `--user` with `--password` may DESCRIBE/SETUP the media (Digest or Basic)."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    if a.auth == "digest":
        auth.add_digest(a.user, a.password, token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    else:
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password), token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    server.set_auth(auth)
    role = "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
    factory.add_role_from_structure(Gst.Structure.from_string(role)[0])


REQUEST_SIGNALS = ("options", "describe", "setup", "play", "pause", "teardown", "get-parameter")


def log_requests(_server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient) -> None:
    for name in REQUEST_SIGNALS:
        method = name.replace("-", "_").upper()
        client.connect(f"{name}-request", lambda _c, _ctx, m=method: log(f"request {m}"))
    client.connect("closed", lambda _c: log("client closed"))


def expire_sessions(server: GstRtspServer.RTSPServer, seconds: int) -> None:
    """Sessions time out after `seconds` without a request: gst-rtsp-server only announces the
    timeout; expiring is the application's job (its examples run the cleanup every 2 s)."""
    pool = server.get_session_pool()

    def connected(_server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient) -> None:
        client.connect("new-session", lambda _c, session: session.set_timeout(seconds))

    def cleanup() -> bool:
        if expired := pool.cleanup():
            log(f"expired {expired} session(s)")
        return GLib.SOURCE_CONTINUE

    server.connect("client-connected", connected)
    GLib.timeout_add(250, cleanup)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    Gst.init(None)
    loop = GLib.MainLoop()

    onvif = a.backchannel is not None
    server = GstRtspServer.RTSPOnvifServer() if onvif else GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))

    factory = GstRtspServer.RTSPOnvifMediaFactory() if onvif else GstRtspServer.RTSPMediaFactory()
    factory.set_launch(media_launch(a))
    factory.set_shared(a.backchannel is None)
    if onvif:  # without its media type the ONVIF factory constructs no media (400 Bad Request)
        factory.set_media_gtype(GstRtspServer.RTSPOnvifMedia)
    if a.backchannel is not None:
        factory.set_backchannel_launch(backchannel_launch(a))
    if a.user:
        add_auth(server, factory, a)
    if a.log_requests:
        server.connect("client-connected", log_requests)
    if a.session_timeout:
        expire_sessions(server, a.session_timeout)
    protocols = GstRtsp.RTSPLowerTrans(0)
    if "tcp" in a.protocols:
        protocols |= GstRtsp.RTSPLowerTrans.TCP
    if "udp" in a.protocols:
        protocols |= GstRtsp.RTSPLowerTrans.UDP
        # Without a pool the RTP/RTCP UDP sockets bind to 0.0.0.0; a unicast pool (ttl 0) on
        # loopback keeps everything on 127.0.0.1.
        pool = GstRtspServer.RTSPAddressPool()
        pool.add_range("127.0.0.1", "127.0.0.1", 30000, 39999, 0)
        factory.set_address_pool(pool)
    factory.set_protocols(protocols)
    server.get_mount_points().add_factory(a.mount, factory)

    producer: FileProducer | None = None
    if a.file:
        producer = FileProducer(a, loop)
        producer.start()

    # attach() creates and binds the listening socket; gst-rtsp-server binds with allow_reuse
    # (SO_REUSEADDR), so a restart on the same port works at once even with connections in
    # TIME_WAIT. On failure it only logs a warning and returns 0, it does not raise.
    if server.attach(None) == 0 or server.get_bound_port() <= 0:
        log(f"cannot listen on 127.0.0.1:{a.port} (in use?)")
        if producer:
            producer.stop()
        return 2

    def quit_(*_: object) -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, quit_)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, quit_)
    if a.exit_on_stdin_eof:

        def on_stdin(_ch: GLib.IOChannel, _cond: GLib.IOCondition) -> bool:
            # Readable means EOF or HUP here: the parent never writes to us.
            loop.quit()
            return GLib.SOURCE_REMOVE

        chan = GLib.IOChannel.unix_new(sys.stdin.fileno())
        GLib.io_add_watch(
            chan, GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP, on_stdin
        )

    port = server.get_bound_port()
    print(f"READY rtsp://127.0.0.1:{port}{a.mount}", flush=True)
    log(f"serving {media_launch(a)}")
    try:
        loop.run()
    finally:
        if producer:
            producer.stop()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
