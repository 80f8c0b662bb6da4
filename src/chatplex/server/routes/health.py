"""GET /health (503 while loading or draining) and GET /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import Depends
from fastapi.responses import JSONResponse, Response

from chatplex.server.json_body import api_router
from chatplex.server.metrics import CONTENT_TYPE
from chatplex.server.routes import get_state
from chatplex.server.schemas import HealthStatus
from chatplex.server.state import ServerState

router = api_router()


@router.get("/health", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def health(state: ServerState = Depends(get_state)) -> JSONResponse:
    status = state.status
    return JSONResponse({"status": status}, status_code=200 if status == "ok" else 503)


@router.get("/metrics", response_class=Response)
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
