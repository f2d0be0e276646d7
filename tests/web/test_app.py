"""The application shell: OpenAPI schema, JSON errors, the front end (placeholder or built)."""

from __future__ import annotations

from pathlib import Path

from webtools import add_user, client, new_app


def test_openapi_schema_is_served_and_documents_the_api(tmp_path: Path) -> None:
    c = client(new_app(tmp_path))
    schema = c.get("/api/openapi.json").json()
    assert schema["info"]["title"] == "cryostack"
    paths = schema["paths"]
    assert "post" in paths["/api/auth/login"]
    assert "get" in paths["/api/projects/{project_id}/runs/{run_id}/log"]
    assert "text/event-stream" in str(paths["/api/projects/{project_id}/events"])
    docs = c.get("/api/docs")
    assert docs.status_code == 200 and "/api/openapi.json" in docs.text
    assert c.get("/api/health").json()["status"] == "ok"


def test_placeholder_index_when_the_front_end_is_not_built(tmp_path: Path) -> None:
    c = client(new_app(tmp_path / "server", static_dir=tmp_path / "no-such-build"))
    r = c.get("/")
    assert r.status_code == 200 and "front end is not built" in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert c.get("/some/page").status_code == 404


def test_built_front_end_is_served_with_client_side_routes(tmp_path: Path) -> None:
    build = tmp_path / "dist"
    (build / "assets").mkdir(parents=True)
    (build / "index.html").write_text("<html>spa index</html>")
    (build / "assets" / "app.js").write_text("console.log('app')")
    (tmp_path / "outside.txt").write_text("not to be served")
    c = client(new_app(tmp_path / "server", static_dir=build))
    assert c.get("/").text == "<html>spa index</html>"
    assert c.get("/assets/app.js").text == "console.log('app')"
    assert c.get("/projects/3/runs/7").text == "<html>spa index</html>"  # client-side route
    assert "not to be served" not in c.get("/..%2Foutside.txt").text
    assert "not to be served" not in c.get("/assets/..%2F..%2Foutside.txt").text


def test_errors_are_json(tmp_path: Path) -> None:
    app = new_app(tmp_path)
    add_user(app, "alice")
    c = client(app, "alice")
    r = c.get("/api/no/such/route")
    assert r.status_code == 404 and r.json() == {"detail": "no API route /api/no/such/route"}
    r = c.post(
        "/api/projects",
        content=b'{"name": "unterminated',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["detail"] == "the request is not valid" and r.json()["problems"]
    r = c.post("/api/projects", json={"title": "wrong field"})
    assert r.status_code == 422 and any("name" in p for p in r.json()["problems"])
    r = c.get("/api/projects/not-a-number")
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    r = c.put("/api/auth/me")
    assert r.status_code == 405 and "detail" in r.json()
    r = c.post("/api/projects", json={"name": ""})
    assert r.status_code == 422
