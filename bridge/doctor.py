"""`obscura doctor`: is the configuration valid, is the bridge running, is every camera up?"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from bridge.config import Config


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0, time.time() - ts)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def doctor(config: Config, url: str | None) -> int:
    where = config.path or "built-in demo configuration"
    print(f"config    {where}: OK ({len(config.cameras)} camera(s))")
    base = url or f"http://{_host(config.status.address)}:{config.status.port}"
    try:
        with urllib.request.urlopen(f"{base}/status", timeout=3) as response:
            status = json.load(response)
    except (urllib.error.URLError, OSError) as exc:
        print(
            f"bridge    not reachable at {base} ({getattr(exc, 'reason', exc)}): "
            "is `obscura run` running?"
        )
        return 1
    hap = status["hap"]
    print(
        f"bridge    {status['name']} up {_ago(status['started_at'])}, HAP on "
        f"{hap['address']}:{hap['port']}, {hap['paired_controllers']} paired controller(s)"
    )
    if not hap["paired_controllers"]:
        print("          not paired yet: run `obscura pair` and scan the code in the Home app")
    problems = 0
    detection = status.get("detection") or {}
    if detection.get("error"):
        problems += 1
        print(f"detection OFF: {detection['error']}")
        print("          cameras keep streaming; fix [detect] in the configuration and restart")
    elif detection.get("enabled"):
        avg = detection.get("inference_ms_avg")
        timing = f", {avg:.0f} ms per inference" if avg else ""
        calls = detection["inference_calls"]
        print(f"detection {detection['model']}: {calls} inference(s){timing}")
    storage = status.get("storage")
    if storage is None:
        print("clips     not recorded: no [storage] (obscura keys generate, keys add-recipient)")
    elif storage.get("error"):
        problems += 1
        print(f"clips     NOT recorded: {storage['error']}")
    else:
        up = storage["uploads"]
        line = (
            f"clips     {storage.get('events_sealed', 0)} event(s) in "
            f"{storage['clips_sealed']} part(s) sealed to {len(storage['recipients'])} "
            f"recipient(s) in {storage['bucket']}; {up['pending_count']} waiting to upload"
        )
        print(line)
        # The uploads' error while they fail (consecutive_failures: 0 again once one succeeds
        # or the bucket answers: an error from an outage that is over is not "failing").
        failing = up.get("last_error") if up.get("consecutive_failures") else None
        if up.get("unreachable_since"):  # a probe finds it down: say so, and why
            problems += 1
            why = failing or storage.get("last_error") or "no answer"  # else the head's error
            print(f"          bucket UNREACHABLE for {_ago(up['unreachable_since'])}, probed "
                  f"every few seconds (clips wait in the spool): {why}")
        elif failing:
            problems += 1
            print(f"          upload failing: {failing}")
        spool = storage.get("spool") or {}
        if spool.get("disk_full"):
            problems += 1
            print(
                f"          SPOOL DISK FULL at {spool['dir']} for {_ago(spool['disk_full_since'])}"
                f" ({spool['disk_free_bytes'] / 2**20:.1f} MiB free): new clips are dropped "
                f"({spool['dropped_disk_full']} so far); free space on that disk"
            )
    for cam in status["cameras"]:
        video = cam["video"]
        if cam["state"] == "streaming" and video:
            size = f"{video['width']}x{video['height']}@{video['fps']:g}"
            detail = f"{size} {video['profile']}, up {_ago(cam['connected_since'])}"
        else:
            problems += 1
            retry = cam.get("next_retry_at")
            when = f", next try in {max(0, retry - time.time()):.0f} s" if retry else ""
            detail = f"{cam['state'].upper()}: {cam['last_error'] or 'no details'}{when}"
        sessions = len(cam["live_sessions"])
        print(
            f"camera    {cam['name']!r} ({cam['source']}): {detail}; "
            f"{sessions} live viewer(s), {cam['reconnects']} reconnect(s)"
        )
        det = cam.get("detection") or {}
        if det.get("enabled"):
            recent = det.get("events_recent") or []
            last = f"; last: {recent[-1]['subject']}" if recent else ""
            subjects = ", ".join(det["subjects"])
            print(
                f"          detecting {subjects}: {det['frames_analysed']} frames analysed, "
                f"{det['detector_calls']} detector runs, {det['events']} event(s){last}"
            )
        _print_audio(cam)
        _print_talkback(cam)
        _print_hksv(cam.get("hksv"))
        _print_doorbell(cam.get("doorbell"), config)
    return 1 if problems else 0


def _print_audio(cam: dict[str, Any]) -> None:
    """One line: the camera's sound, whether HomeKit has a Microphone for it, losses."""
    audio, mic = cam.get("audio"), cam.get("microphone")
    microphone = "Microphone" if mic else "no Microphone"
    if audio:
        channels = {1: "mono", 2: "stereo"}.get(audio["channels"], f"{audio['channels']} ch")
        dropped = f", {audio['dropped']} dropped by slow consumers" if audio["dropped"] else ""
        sound = (cam.get("recording") or {}).get("last_clip_sound")
        clips = ""
        if sound:
            how = "copied" if sound["mode"] == "copy" else f"as {sound['aac']}"
            clips = f"; last clip's sound {how}"
        print(f"          audio: {audio['codec']} {audio['sample_rate']} Hz {channels}, "
              f"{audio['packets']} packets{dropped}; {microphone}{clips}")
        if cam.get("audio_problem"):  # e.g. a USB microphone unplugged: the format stays known
            print(f"          audio: NO SOUND NOW: {cam['audio_problem']}")
    elif cam.get("audio_problem"):
        print(f"          audio: NOT carried, its sound is {cam['audio_problem']}; {microphone}")
    elif cam.get("state") == "streaming":
        print(f"          audio: none (the camera sends no sound); {microphone}")


def _print_talkback(cam: dict[str, Any]) -> None:
    """One line for a camera with a Speaker: its back channel and the last talk's trouble."""
    talk = cam.get("talkback")
    if not cam.get("speaker") or talk is None:
        return
    codec = f" ({talk['codec']})" if talk.get("codec") else f" ({cam.get('speaker_reason')})"
    line = f"          talk-back: Speaker{codec}, {talk['talks']} talk(s), {talk['state']}"
    if talk.get("muted"):
        line += ", Speaker muted in the Home app"
    if talk.get("failures"):
        line += f"; {talk['failures']} refused, last: {talk['last_error']}"
    print(line)


def _print_doorbell(doorbell: dict[str, Any] | None, config: Config) -> None:
    if doorbell is None:
        return
    last = doorbell["last_ring_at"]
    when = f", last {_ago(last)} ago" if last else ""
    suppressed = ""
    if doorbell["suppressed"]:
        suppressed = f", {doorbell['suppressed']} suppressed (rang again within 2 s)"
    print(f"          doorbell: {doorbell['rings']} ring(s){when}{suppressed}; "
          f"ring with `obscura ring` (token: {config.state_dir / 'doorbell.token'})")


def _print_hksv(hksv: dict[str, Any] | None) -> None:
    if hksv is None:
        print("          HomeKit Secure Video: off in the configuration")
        return
    mode = hksv["mode"]
    if not mode["homekit_active"]:
        state = "camera turned OFF in the Home app"
    elif not hksv["configured"]:
        state = "offered; not set up by a home hub yet (Home app: Recording Options)"
    elif not mode["recording_active"]:
        state = "configured, recording off (Home app: Stream or Detect Activity)"
    else:
        sel = hksv["selected"]
        state = (
            f"recording {sel['width']}x{sel['height']}@{sel['fps']} {sel['bitrate_kbps']} kbps"
            f"{'' if mode['audio_active'] else ', audio muted'}"
        )
    print(f"          HomeKit Secure Video: {state}; {hksv['hds_sessions']} data stream(s)")
    current, last = hksv.get("recording"), hksv.get("last_recording")
    if current:
        print(f"          recording now, for {_ago(current['started_at'])} ({current['mode']})")
    if last:
        detail = f": {last['detail']}" if last["detail"] else ""
        print(
            f"          last recording {_ago(last['started_at'])} ago, {last['seconds']} s, "
            f"{last['fragments']} fragment(s), ended by {last['ended'].replace('_', ' ')}{detail}"
        )


def _host(address: str) -> str:
    if address in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{address}]" if ":" in address else address
