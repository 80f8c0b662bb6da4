"""GET /: the chat web page (one static file, no build step, no CDN)."""

from __future__ import annotations

from importlib.resources import files

from fastapi.responses import HTMLResponse

from chatplex.server.json_body import api_router

router = api_router()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(files("chatplex.server").joinpath("web/index.html").read_text(encoding="utf-8"))
