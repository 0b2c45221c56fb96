"""The web UI: a page and its assets, served by the API from the package (nothing from a CDN).

The page is a shell with no data in it; everything it shows it reads from the REST API (and the
event stream) with the user's token, as any client does. So the shell and its assets need no
token, and beyond loopback the page asks for one (service/api/ui/static/app.js).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# the page may talk to its own origin only: no CDN, no inline script, no third-party anything
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html",
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")
