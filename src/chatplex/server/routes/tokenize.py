"""POST /tokenize and /detokenize (vLLM's shapes)."""

from __future__ import annotations

from chatplex.server.json_body import api_router

router = api_router()
