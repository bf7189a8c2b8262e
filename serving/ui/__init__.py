"""The browser page at ``GET /ui``: one self-contained HTML file (CSS and JS inline, no CDN, no build
step) served by a tiny Starlette app that the service mounts beside its API (``mount_asgi_app``)."""
from __future__ import annotations

from pathlib import Path

PAGE = Path(__file__).with_name("index.html")

def app():
    """Starlette app answering ``GET /`` (mounted at ``/ui``) with the page."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    async def page(request):
        return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    return Starlette(routes=[Route("/", page, methods=["GET", "HEAD"]),
                             Route("/index.html", page, methods=["GET", "HEAD"])])
