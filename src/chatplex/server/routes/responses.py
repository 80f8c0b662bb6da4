"""POST /v1/responses (OpenAI Responses API)."""

from __future__ import annotations

from chatplex.server.json_body import api_router

router = api_router()
