"""POST /v1/embeddings and rerank (/v1/rerank, /rerank)."""

from __future__ import annotations

from chatplex.server.json_body import api_router

router = api_router()
