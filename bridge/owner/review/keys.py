"""The review app's state, as typed aiohttp AppKeys (one module, so routes and app agree)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from bridge.owner.review.actions import Actions
    from bridge.owner.review.library import Library
    from bridge.owner.review.videos import Posters, Videos

LIBRARY: web.AppKey[Library] = web.AppKey("library")
VIDEOS: web.AppKey[Videos] = web.AppKey("videos")
POSTERS: web.AppKey[Posters] = web.AppKey("posters")
ACTIONS: web.AppKey[Actions] = web.AppKey("actions")
STATIC: web.AppKey[Path] = web.AppKey("static")
