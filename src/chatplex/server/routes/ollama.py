"""Ollama's API under /api/ (chat, generate, tags, show, version, ps)."""

from __future__ import annotations

from chatplex.server.json_body import api_router

router = api_router()
