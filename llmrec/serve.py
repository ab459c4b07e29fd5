"""HTTP service over a `Recommender` (FastAPI; `llmrec serve` runs it under uvicorn).

    GET  /health                                 status and catalogue size
    GET  /users/{user_id}/recommendations?k=10   a known user
    POST /recommendations                        {"user_id": ...} or {"history": [...], "profile": {...}}, "k"
    GET  /docs, /openapi.json                    OpenAPI

Responses are the library's own `Recommendation` objects. Typed errors keep their meaning over HTTP: an unknown
user or item is 404, any other `RecommendError` (bad k, conflicting arguments) and a malformed body are 422;
the JSON body is {"error": <error class>, "detail": <message>} (FastAPI's own list for body validation).
Endpoints are plain `def`: FastAPI runs them on its thread pool, and `Recommender.recommend` is thread-safe.
"""

from __future__ import annotations

from typing import Any, Mapping

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llmrec.errors import RecommendError, UnknownItemError, UnknownUserError
from llmrec.io import package_version
from llmrec.pipeline import Recommender, set_request_threads
from llmrec.schema import Recommendation

MAX_K = 1000  # one response stays small; the Recommender itself caps k at the catalogue size


class RecommendRequest(BaseModel):
    """A request body: a known `user_id`, or a new user's `history` (item ids, oldest first) and `profile`."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    history: list[str] | None = None
    profile: dict[str, str] | None = None
    k: int = Field(default=10, ge=1, le=MAX_K)


class Health(BaseModel):
    status: str
    version: str
    users: int
    items: int
    dataset: str


def _error(status: int, err: Exception) -> JSONResponse:
    detail = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)  # KeyError's str() quotes
    return JSONResponse(status_code=status, content={"error": type(err).__name__, "detail": detail})


def create_app(recommender: Recommender, *, title: str = "llmrec") -> FastAPI:
    """A FastAPI app serving `recommender`; requests share it read-only."""
    app = FastAPI(title=title, version=package_version("llmrec"),
                  description="Recommendations with grounded explanations from a built llmrec folder.")

    @app.exception_handler(UnknownUserError)
    @app.exception_handler(UnknownItemError)
    async def _not_found(request: Request, err: RecommendError) -> JSONResponse:
        return _error(404, err)

    @app.exception_handler(RecommendError)
    async def _unprocessable(request: Request, err: RecommendError) -> JSONResponse:
        return _error(422, err)

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", version=app.version, users=len(recommender._sequences),
                      items=len(recommender.vocab.ids), dataset=recommender.dataset.name)

    @app.get("/users/{user_id}/recommendations", response_model=list[Recommendation])
    def recommend_user(user_id: str, k: int = Query(10, ge=1, le=MAX_K)) -> list[Recommendation]:
        return recommender.recommend(user_id, k=k)

    @app.post("/recommendations", response_model=list[Recommendation])
    def recommend(body: RecommendRequest) -> list[Recommendation]:
        return recommender.recommend(body.user_id, history=body.history, profile=body.profile, k=body.k)

    return app


def serve(recommender: Recommender, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          threads: int = 1, **uvicorn_kwargs: Mapping[str, Any]) -> None:
    """Run the app under uvicorn until interrupted (one process; FastAPI's thread pool serves requests).

    `threads`: torch intra-op threads per request (`set_request_threads`); 1 lets concurrent requests use the
    cores instead of oversubscribing them.
    """
    import uvicorn

    set_request_threads(threads)
    uvicorn.run(create_app(recommender), host=host, port=port, log_level=log_level, **uvicorn_kwargs)
