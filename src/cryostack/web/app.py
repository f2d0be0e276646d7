"""The web application: ``create_app(settings)`` builds the FastAPI app.

The REST API lives under ``/api`` (OpenAPI schema at ``/api/openapi.json``, docs at
``/api/docs``). Every error is JSON: ``{"detail": "<message>"}``, plus ``"problems"`` (a list
of messages) when a request or a run is invalid. Other paths serve the built single-page front
end from ``static_dir`` (default: the package's ``web/static``): a file when one matches,
else ``index.html`` (client-side routes). Without a built front end, ``/`` says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import cryostack
from cryostack.core.project import ProjectError, ValidationError
from cryostack.core.registry import UnknownProtocolError
from cryostack.web import routes_accounts, routes_projects, routes_runs, sse
from cryostack.web.config import Settings
from cryostack.web.deps import ServerState
from cryostack.web.security import PathEscapeError, resolve_inside

PACKAGED_STATIC = Path(__file__).resolve().parent / "static"
PUBLIC_API_ROUTES = frozenset(
    {
        ("GET", "/api/health"),
        ("POST", "/api/auth/login"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/docs"),
        ("GET", "/api/docs/oauth2-redirect"),
        ("GET", "/api/redoc"),
    }
)

PLACEHOLDER_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cryostack</title></head>
<body><h1>cryostack server</h1>
<p>The web front end is not built. The API is running: see <a href="/api/docs">/api/docs</a>.</p>
</body></html>
"""


def _error(status_code: int, detail: Any, problems: list[str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(body, status_code=status_code)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        response = _error(exc.status_code, exc.detail)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "the request is not valid", problems)

    @app.exception_handler(ValidationError)
    async def run_invalid(_request: Request, exc: ValidationError) -> Response:
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "the run is not valid", exc.problems)

    @app.exception_handler(UnknownProtocolError)
    async def unknown_protocol(_request: Request, exc: UnknownProtocolError) -> Response:
        return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))

    @app.exception_handler(ProjectError)
    async def project_error(_request: Request, exc: ProjectError) -> Response:
        return _error(status.HTTP_409_CONFLICT, str(exc))

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, _exc: Exception) -> Response:
        return _error(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


def static_root(settings: Settings) -> Path | None:
    """The built front end's folder when it has an ``index.html``."""
    folder = settings.static_dir or PACKAGED_STATIC
    return folder if (folder / "index.html").is_file() else None


def _install_front_end(app: FastAPI, settings: Settings) -> None:
    @app.get("/{path:path}", include_in_schema=False, response_model=None)
    def front_end(path: str) -> Response:
        if path == "api" or path.startswith("api/"):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no API route /{path}")
        root = static_root(settings)
        if root is None:
            if path in ("", "index.html"):
                return HTMLResponse(PLACEHOLDER_HTML)
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the web front end is not built")
        try:
            target = resolve_inside(root, path)
        except PathEscapeError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "not found") from exc
        if path and target.is_file():
            return FileResponse(target)
        return FileResponse(root / "index.html")


def create_app(settings: Settings) -> FastAPI:
    """The application for ``settings``; opens (and creates or upgrades) the server database."""
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title="cryostack",
        version=cryostack.__version__,
        description="cryo-EM workflows: projects, protocols, runs and their results.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url="/api/redoc",
        swagger_ui_oauth2_redirect_url="/api/docs/oauth2-redirect",
        lifespan=lifespan,
    )
    app.state.cryostack = state
    _install_error_handlers(app)

    @app.get("/api/health", tags=["server"])
    def health() -> dict[str, Any]:
        """Liveness check (no sign-in needed)."""
        return {"status": "ok", "version": cryostack.__version__}

    app.include_router(routes_accounts.router)
    app.include_router(routes_projects.router)
    app.include_router(routes_runs.router)
    app.include_router(sse.router)
    _install_front_end(app, settings)
    return app
