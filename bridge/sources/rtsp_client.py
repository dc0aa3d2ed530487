"""A small RTSP/1.0 client connection of our own, for what FFmpeg cannot do: ONVIF back channels.

FFmpeg's RTSP demuxer only receives; it can neither send a `Require` header nor send RTP to a
camera. Talk-back needs both (bridge/sources/backchannel.py), so this module speaks just enough
RTSP over one asyncio TCP connection (TLS for rtsps://):

- requests with CSeq, answered in order; one at a time (a lock), each with a timeout;
- authentication as cameras ask for it: Digest (RFC 2617/7616: MD5, SHA-256, their -sess
  forms, qop=auth with nc/cnonce, a stale nonce renewed) or Basic. Credentials come from the
  URL's userinfo, are sent only after the camera asks, and never appear in a message (errors
  carry the redacted URL);
- RTP/RTCP interleaved on the same connection (RFC 2326 §10.12: `$`, channel, 16-bit length):
  frames we send go out whole in one write; frames the camera sends (RTCP receiver reports) are
  read and dropped, so its socket never fills;
- the reader runs as one task for the connection's life: the camera closing the connection, a
  reset, garbage or a request left unanswered for `timeout` ends it, fails what waits, and
  `closed_reason` says why;
- a request the camera sends us (some send OPTIONS or GET_PARAMETER as a keepalive) is answered
  200 OK, anything else 501, so its session does not hang on us.

Bounded against a hostile camera: a line is at most 8 KiB, a response has at most 64 headers and
a body of at most 256 KiB, or the connection is dropped.

TLS for rtsps:// does not verify the camera's certificate (cameras ship self-signed ones), the
same as the video path: FFmpeg's RTSP client does not verify either.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from bridge.redact import redact_url

log = logging.getLogger(__name__)

MAX_LINE = 8192
MAX_HEADERS = 64
MAX_BODY = 256 * 1024
USER_AGENT = "Obscura"
WRITE_BACKLOG = 16 * 1024  # bytes unsent before a write waits (~2 s of G.711)


class RtspError(Exception):
    """The connection or a request failed; the message never carries credentials."""


class RtspAuthError(RtspError):
    """The camera wants credentials the URL does not have, or refused the ones it has."""


class RtspStatusError(RtspError):
    def __init__(self, method: str, status: int, reason: str, display_url: str) -> None:
        self.method, self.status, self.reason = method, status, reason
        super().__init__(f"{method} {display_url}: {status} {reason}")


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), default)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Digest realm="x", nonce="y"' -> ("digest", {"realm": "x", "nonce": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return scheme.lower(), params


_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class DigestAuth:
    """The Authorization header for each request, from the camera's last challenge."""

    def __init__(self, user: str, password: str, challenge: Mapping[str, str]) -> None:
        self.user, self.password = user, password
        self.realm = challenge.get("realm", "")
        self.nonce = challenge.get("nonce", "")
        self.opaque = challenge.get("opaque")
        self.algorithm = challenge.get("algorithm", "MD5")
        self._name_algorithm = "algorithm" in challenge  # echoed only when the camera named it
        base = self.algorithm.upper().removesuffix("-SESS")
        if base not in _HASHES:
            raise RtspAuthError(f"the camera asks for Digest {self.algorithm}, which we lack")
        self._hash = _HASHES[base]
        self._sess = self.algorithm.upper().endswith("-SESS")
        qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
        self.qop = "auth" if "auth" in qops else None
        if qops and self.qop is None:
            raise RtspAuthError(f"the camera asks for Digest qop={'/'.join(qops)}, not auth")
        self.nc = 0
        self.cnonce = os.urandom(8).hex()

    def _h(self, text: str) -> str:
        return self._hash(text.encode()).hexdigest()

    def header(self, method: str, uri: str) -> str:
        ha1 = self._h(f"{self.user}:{self.realm}:{self.password}")
        if self._sess:
            ha1 = self._h(f"{ha1}:{self.nonce}:{self.cnonce}")
        ha2 = self._h(f"{method}:{uri}")
        fields = [
            f'username="{self.user}"',
            f'realm="{self.realm}"',
            f'nonce="{self.nonce}"',
            f'uri="{uri}"',
        ]
        if self.qop:
            self.nc += 1
            nc = f"{self.nc:08x}"
            digest = self._h(f"{ha1}:{self.nonce}:{nc}:{self.cnonce}:{self.qop}:{ha2}")
            fields += [f"qop={self.qop}", f"nc={nc}", f'cnonce="{self.cnonce}"']
        else:
            digest = self._h(f"{ha1}:{self.nonce}:{ha2}")
        fields.append(f'response="{digest}"')
        if self._name_algorithm:
            fields.append(f"algorithm={self.algorithm}")
        if self.opaque is not None:
            fields.append(f'opaque="{self.opaque}"')
        return "Digest " + ", ".join(fields)


@dataclass(frozen=True, slots=True)
class RtspUrl:
    url: str  # what requests name: no userinfo
    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None
    display: str  # redacted, for messages

    @classmethod
    def parse(cls, url: str) -> RtspUrl:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("rtsp", "rtsps") or not parts.hostname:
            raise RtspError(f"not an RTSP URL: {redact_url(url)}")
        try:
            port = parts.port or (322 if scheme == "rtsps" else 554)
        except ValueError:
            raise RtspError(f"bad port in {redact_url(url)}") from None
        hostport = parts.netloc.rsplit("@", 1)[-1]
        clean = f"{scheme}://{hostport}{parts.path or '/'}"
        if parts.query:
            clean += f"?{parts.query}"
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(clean, parts.hostname, port, scheme == "rtsps", user, password, redact_url(url))


class RtspConnection:
    """One TCP (or TLS) connection to a camera: requests, responses and interleaved frames."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.target = RtspUrl.parse(url)
        self.timeout = timeout
        self.closed_reason: str | None = None
        self.frames_received = 0
        self.public = ""  # the methods the camera's OPTIONS answer lists
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._cseq = 0
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._lock = asyncio.Lock()
        self._auth: DigestAuth | str | None = None  # a Digest state or a Basic header
        self._closed = asyncio.Event()

    @property
    def display_url(self) -> str:
        return self.target.display

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def connect(self) -> None:
        t = self.target
        context: ssl.SSLContext | None = None
        if t.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(t.host, t.port, ssl=context, limit=MAX_LINE),
                self.timeout,
            )
        except TimeoutError:
            raise RtspError(
                f"cannot connect to {t.display}: no answer within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise RtspError(f"cannot connect to {t.display}: {why}") from None
        self._reader_task = asyncio.create_task(self._read_loop(), name="rtsp-reader")

    async def request(
        self, method: str, uri: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Send one request (authenticating when the camera asks) and return its 2xx response;
        anything else raises (RtspAuthError for 401, RtspStatusError otherwise)."""
        uri = uri or self.target.url
        async with self._lock:
            response = await self._exchange(method, uri, headers or {})
            if response.status == 401 and self._accept_challenge(response):
                response = await self._exchange(method, uri, headers or {})
                if response.status == 401 and self._renewed(response):
                    response = await self._exchange(method, uri, headers or {})
            if response.status == 401:
                if self.target.user is None:
                    raise RtspAuthError(
                        f"{self.target.display} asks for credentials (401 Unauthorized): put "
                        "user:password in the camera's source URL"
                    )
                raise RtspAuthError(
                    f"{self.target.display} refused the credentials (401 Unauthorized)"
                )
            if not 200 <= response.status < 300:
                raise RtspStatusError(method, response.status, response.reason, self.display_url)
            return response

    def _accept_challenge(self, response: Response) -> bool:
        """Take the camera's challenge; False when there is nothing (new) to answer with."""
        if self._auth is not None or self.target.user is None:
            return False
        challenges = [parse_challenge(h) for h in response.get_all("www-authenticate")]
        user, password = self.target.user, self.target.password or ""
        for scheme, params in challenges:
            if scheme == "digest":
                self._auth = DigestAuth(user, password, params)
                return True
        for scheme, _ in challenges:
            if scheme == "basic":
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                self._auth = f"Basic {token}"
                return True
        return False

    def _renewed(self, response: Response) -> bool:
        """A Digest 401 with stale=true only means the nonce expired: answer the new one."""
        if not isinstance(self._auth, DigestAuth):
            return False
        for scheme, params in (parse_challenge(h) for h in response.get_all("www-authenticate")):
            if scheme == "digest" and params.get("stale", "").lower() == "true":
                self._auth = DigestAuth(self._auth.user, self._auth.password, params)
                return True
        return False

    async def _exchange(self, method: str, uri: str, headers: Mapping[str, str]) -> Response:
        if self._writer is None or self.closed:
            raise RtspError(f"{method} {self.display_url}: {self.closed_reason or 'not connected'}")
        self._cseq += 1
        cseq = self._cseq
        lines = [f"{method} {uri} RTSP/1.0", f"CSeq: {cseq}", f"User-Agent: {USER_AGENT}"]
        if isinstance(self._auth, DigestAuth):
            lines.append(f"Authorization: {self._auth.header(method, uri)}")
        elif self._auth is not None:
            lines.append(f"Authorization: {self._auth}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[cseq] = future
        try:
            await self._write(("\r\n".join(lines) + "\r\n\r\n").encode())
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            # A camera that stops answering is gone (a power cut, a dropped link: no reset
            # comes); the connection ends, so whoever sends on it hears so at once.
            self._end(f"no answer to {method} within {self.timeout:g} s")
            raise RtspError(f"{self.display_url}: {self.closed_reason}") from None
        finally:
            self._pending.pop(cseq, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved: the caller has heard through the raise

    async def send_interleaved(self, channel: int, packets: list[bytes]) -> None:
        """RTP/RTCP packets on an interleaved channel, in one write; raises RtspError when the
        connection is gone or the camera stops reading for `timeout`."""
        out = bytearray()
        for p in packets:
            out += b"$" + bytes((channel,)) + len(p).to_bytes(2, "big") + p
        await self._write(bytes(out))

    async def _write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or self.closed:
            raise RtspError(f"{self.display_url}: {self.closed_reason or 'not connected'}")
        try:
            writer.write(data)
            # Only wait when the camera is behind: a drain under wait_for costs a task per
            # write, and talk-back writes 50 times a second.
            if writer.transport.get_write_buffer_size() > WRITE_BACKLOG:
                await asyncio.wait_for(writer.drain(), self.timeout)
        except TimeoutError:
            self._end(f"the camera stopped reading for {self.timeout:g} s")
            raise RtspError(f"{self.display_url}: {self.closed_reason}") from None
        except (OSError, RuntimeError) as exc:  # reset, broken pipe, transport closed
            self._end(
                f"the connection failed: {exc.strerror or type(exc).__name__}"
                if isinstance(exc, OSError)
                else "the connection closed"
            )
            raise RtspError(f"{self.display_url}: {self.closed_reason}") from None

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        reason = "the camera closed the connection"
        try:
            while True:
                first = await reader.readexactly(1)
                if first == b"$":
                    head = await reader.readexactly(3)
                    await reader.readexactly(int.from_bytes(head[1:], "big"))
                    self.frames_received += 1
                    continue
                start = first + await self._line(reader)
                await self._message(reader, start.decode("latin-1").strip())
        except asyncio.IncompleteReadError:
            pass
        except (asyncio.LimitOverrunError, ValueError, RtspError) as exc:
            reason = f"the camera sent something that is not RTSP ({exc})"
        except OSError as exc:
            reason = f"the connection failed: {exc.strerror or type(exc).__name__}"
        self._end(reason)

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readuntil(b"\n")
        if len(line) > MAX_LINE:
            raise RtspError("line too long")
        return line

    async def _message(self, reader: asyncio.StreamReader, start: str) -> None:
        headers: list[tuple[str, str]] = []
        while True:
            line = (await self._line(reader)).decode("latin-1").strip()
            if not line:
                break
            if len(headers) >= MAX_HEADERS:
                raise RtspError("too many headers")
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        length = next((v for k, v in headers if k == "content-length"), "0")
        size = int(length)
        if not 0 <= size <= MAX_BODY:
            raise RtspError(f"body of {size} bytes")
        body = await reader.readexactly(size) if size else b""
        if start.startswith("RTSP/"):
            _, code, reason = [*start.split(None, 2), "", ""][:3]
            cseq = int(next((v for k, v in headers if k == "cseq"), "-1"))
            future = self._pending.get(cseq)
            if future is not None and not future.done():
                future.set_result(Response(int(code), reason, headers, body))
            return
        method = start.split(None, 1)[0] if start else ""
        cseq = next((v for k, v in headers if k == "cseq"), "0")
        status = "200 OK" if method in ("OPTIONS", "GET_PARAMETER") else "501 Not Implemented"
        with contextlib.suppress(RtspError):
            await self._write(f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n\r\n".encode())

    def _end(self, reason: str) -> None:
        if self.closed:
            return
        self.closed_reason = reason
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RtspError(f"{self.display_url}: {reason}"))
        if self._writer is not None:
            self._writer.close()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        """Close the connection and wait for the reader; idempotent."""
        self._end(self.closed_reason or "closed by us")
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
