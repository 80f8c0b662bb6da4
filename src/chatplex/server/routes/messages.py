"""POST /v1/messages and /v1/messages/count_tokens (Anthropic Messages API)."""

from __future__ import annotations

from chatplex.server.json_body import api_router

router = api_router()
