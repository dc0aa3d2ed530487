"""make_app: the review app's aiohttp application (docs/review.md).

Everything it holds is set up in `cleanup_ctx` (aiohttp runs the cleanup only if the set-up
finished): the library's first load starts in the background as the server starts, and the
videos' background checks, the owner thread and the bucket are closed when it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from bridge.owner.audit import Owner
from bridge.owner.review.actions import Actions
from bridge.owner.review.keys import ACTIONS, LIBRARY, POSTERS, STATIC, VIDEOS
from bridge.owner.review.library import Library, OwnerThread
from bridge.owner.review.routes import routes
from bridge.owner.review.security import Session, guard, secure_headers
from bridge.owner.review.videos import Posters, Videos
from bridge.store.bucket import Bucket

STATIC_DIR = Path(__file__).parent / "static"


def make_app(
    owner: Owner,
    bucket: Bucket,
    session: Session,
    *,
    bridge_url: str | None = None,
    static_dir: Path = STATIC_DIR,
) -> web.Application:
    """`owner` reads and verifies the manifest (on its own thread); `bucket` (another client
    of the same bucket, on the app's loop) serves the ranged media."""
    app = web.Application(middlewares=[guard(session)], client_max_size=64 * 1024)
    app.on_response_prepare.append(secure_headers)
    thread = OwnerThread(owner)
    library = Library(thread)
    app[LIBRARY] = library
    app[VIDEOS] = Videos(bucket, owner.identities, library)
    app[POSTERS] = Posters(bucket, owner.identities)
    app[ACTIONS] = Actions(thread, library, bridge_url)
    app[STATIC] = static_dir
    app.add_routes(routes)
    # Static files (no directory listing; symlinks out of the folder are refused by default).
    app.router.add_static("/static/", static_dir, show_index=False, follow_symlinks=False)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        load = library.refresh()
        yield
        load.cancel()
        await app[VIDEOS].close()
        await app[ACTIONS].close()
        await thread.close()
        await bucket.close()

    app.cleanup_ctx.append(lifetime)
    return app
