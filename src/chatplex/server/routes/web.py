"""GET /: the chat web page (static files, no build step, no CDN), and the settings it starts from.

`/web/...` serves the page's vendored scripts (server/web/vendor: markdown and HTML sanitising).
`/webchat/config` tells the page the served model, its template, the generation defaults it starts with (the
model's own arguments, not numbers of the page's) and which media the model takes.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import Depends
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel

from chatplex.server.errors import ServerError
from chatplex.server.json_body import api_router
from chatplex.server.routes import get_state
from chatplex.server.state import ServerState

router = api_router()

# The only files /web/ serves: a fixed list, so no request can name another path.
STATIC = {"vendor/marked.min.js": "text/javascript", "vendor/purify.min.js": "text/javascript"}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(files("chatplex.server").joinpath("web/index.html").read_text(encoding="utf-8"))


@router.get("/web/{name:path}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in STATIC:
        raise ServerError(404, f"No file {name!r} here.", "not_found_error")
    body = files("chatplex.server").joinpath("web", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=3600"})


class WebchatConfig(BaseModel):
    model: str
    template: str | None  # None: the model's tokenizer's own
    reasoning: bool  # replies may carry reasoning_content (the template has a reasoning parser)
    media: list[str]  # "image", "video", "audio": what the model takes
    defaults: dict[str, Any]  # temperature, top_p, max_new_tokens, do_sample of the model's arguments
    max_model_len: int | None


@router.get("/webchat/config", response_model=WebchatConfig)
async def webchat_config(state: ServerState = Depends(get_state)) -> WebchatConfig:
    chat_model = state.model_for(None)
    engine, template = chat_model.engine, chat_model.template
    gen = chat_model.args.generating
    return WebchatConfig(
        model=state.model_name,
        template=None if template is None or template.name == "tokenizer" else template.name,
        reasoning=bool(template is not None and template.reasoning_parser),
        media=list(engine.media_kinds),
        defaults={
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "max_new_tokens": gen.max_new_tokens,
            "do_sample": gen.do_sample,
        },
        max_model_len=engine.max_model_len,
    )
