"""The authorization matrix: every API route, tried by an anonymous caller, by a user who is
not a member of the project, by a member and by the owner. Another user's project, run, file
or log is a 404 (or 403 for owner-only actions), never data. A new route without a case here
fails ``test_every_api_route_has_a_case``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from webtools import add_user, client, new_app, plugin_installed, token_client

from cryostack.web.app import PUBLIC_API_ROUTES

SECRET_NAME = "alice-secret-project"
SECRET_PARAM = 424242


@dataclass(frozen=True)
class Case:
    """How to call a route. ``scope``: 'user' (the caller's own things), 'admin' (admins
    only), 'project' (project members), 'manage' (project owner or admin)."""

    scope: str
    body: Any = None
    query: dict[str, Any] = field(default_factory=dict)


CASES: dict[tuple[str, str], Case] = {
    ("POST", "/api/auth/logout"): Case("user"),
    ("GET", "/api/auth/me"): Case("user"),
    ("POST", "/api/auth/password"): Case(
        "user", {"current_password": "wrong-password", "new_password": "whatever-123"}
    ),
    ("GET", "/api/tokens"): Case("user"),
    ("POST", "/api/tokens"): Case("user", {"name": "t"}),
    ("DELETE", "/api/tokens/{token_id}"): Case("user"),
    ("GET", "/api/users"): Case("admin"),
    ("POST", "/api/users"): Case("admin", {"username": "mallory", "password": "mallory-pw-1"}),
    ("PATCH", "/api/users/{user_id}"): Case("admin", {"role": "admin"}),
    ("GET", "/api/protocols"): Case("user"),
    ("GET", "/api/protocols/{protocol_id}"): Case("user"),
    ("GET", "/api/projects"): Case("user"),
    ("POST", "/api/projects"): Case("user", {"name": "new"}),
    ("GET", "/api/projects/{project_id}"): Case("project"),
    ("DELETE", "/api/projects/{project_id}"): Case("manage"),
    ("GET", "/api/projects/{project_id}/members"): Case("project"),
    ("PUT", "/api/projects/{project_id}/members/{username}"): Case("manage"),
    ("DELETE", "/api/projects/{project_id}/members/{username}"): Case("manage"),
    ("GET", "/api/projects/{project_id}/files"): Case("project", query={"path": "runs"}),
    ("GET", "/api/projects/{project_id}/files/content"): Case(
        "project", query={"path": "notes.txt"}
    ),
    ("GET", "/api/projects/{project_id}/runs"): Case("project"),
    ("POST", "/api/projects/{project_id}/runs"): Case(
        "project", {"protocol": "test-squares", "params": {"n_items": 2}}
    ),
    ("POST", "/api/projects/{project_id}/runs/validate"): Case(
        "project", {"protocol": "test-squares", "params": {"n_items": 2}}
    ),
    ("GET", "/api/projects/{project_id}/runs/{run_id}"): Case("project"),
    ("DELETE", "/api/projects/{project_id}/runs/{run_id}"): Case("project"),
    ("POST", "/api/projects/{project_id}/runs/{run_id}/launch"): Case("project"),
    ("POST", "/api/projects/{project_id}/runs/{run_id}/stop"): Case("project"),
    ("POST", "/api/projects/{project_id}/runs/{run_id}/continue"): Case("project"),
    ("POST", "/api/projects/{project_id}/runs/{run_id}/restart"): Case("project"),
    ("POST", "/api/projects/{project_id}/runs/{run_id}/copy"): Case("project", {}),
    ("GET", "/api/projects/{project_id}/runs/{run_id}/log"): Case("project"),
    ("GET", "/api/projects/{project_id}/workflow"): Case("project"),
    ("POST", "/api/projects/{project_id}/workflow"): Case(
        "project", {"format": "cryostack-workflow", "version": 1, "runs": []}
    ),
    ("GET", "/api/projects/{project_id}/events"): Case("project"),
}


@dataclass
class World:
    app: FastAPI
    project_id: int
    ids: dict[str, int]
    clients: dict[str, TestClient]
    token_id: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Alice owns a project with a draft run, a log and a file; Carol is a member; Bob is a
    user with a project of his own; Root is an admin."""
    with plugin_installed():
        app = new_app(tmp_path_factory.mktemp("server"), sse_max_s=0.3)
        ids = {name: add_user(app, name) for name in ("alice", "bob", "carol")}
        ids["root"] = add_user(app, "root", role="admin")
        clients = {name: client(app, name) for name in ids}
        alice = clients["alice"]
        project_id = alice.post("/api/projects", json={"name": SECRET_NAME}).json()["id"]
        assert clients["bob"].post("/api/projects", json={"name": "bobs"}).status_code == 201
        assert alice.put(f"/api/projects/{project_id}/members/carol").status_code == 200
        run = alice.post(
            f"/api/projects/{project_id}/runs",
            json={"protocol": "test-squares", "params": {"n_items": 3, "fail_item": SECRET_PARAM}},
        )
        assert run.status_code == 201, run.text
        state = app.state.cryostack
        root = state.open_project(state.store.project(project_id)).root
        (root / "notes.txt").write_text(f"secret notes {SECRET_NAME}\n")
        log = root / run.json()["run_dir"] / "run.log"
        log.write_text(f"log line of {SECRET_NAME}\n")
        token = alice.post("/api/tokens", json={"name": "cli"}).json()
        clients["alice-token"] = token_client(app, token["token"])
        yield World(app, project_id, ids, clients, token["id"])


def _routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every API route, from the OpenAPI schema (routers nest, so the schema is the inventory;
    the catch-all of the front end is the only route left out of it)."""
    paths = app.openapi()["paths"]
    found = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    assert all(path.startswith("/api/") for _, path in found)
    return found


def _url(template: str, w: World) -> str:
    return template.format(
        project_id=w.project_id,
        run_id=1,
        token_id=w.token_id,
        user_id=w.ids["alice"],
        username="carol",
        protocol_id="test-squares",
    )


def _call(c: TestClient, method: str, template: str, w: World) -> Any:
    case = CASES[(method, template)]
    return c.request(method, _url(template, w), json=case.body, params=case.query)


def test_every_api_route_has_a_case(world: World) -> None:
    routes = _routes(world.app)
    assert routes - PUBLIC_API_ROUTES == set(CASES)
    assert {("GET", "/api/health"), ("POST", "/api/auth/login")} <= routes


def _no_data(response: Any) -> None:
    assert response.headers["content-type"].startswith("application/json")
    text = response.text
    assert SECRET_NAME not in text and str(SECRET_PARAM) not in text
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize(("method", "template"), sorted(CASES))
def test_anonymous_is_refused(world: World, method: str, template: str) -> None:
    r = _call(TestClient(world.app), method, template, world)
    assert r.status_code == 401, r.text
    _no_data(r)


@pytest.mark.parametrize(
    ("method", "template"), sorted(k for k, c in CASES.items() if c.scope in ("project", "manage"))
)
def test_other_users_project_is_not_found(world: World, method: str, template: str) -> None:
    r = _call(world.clients["bob"], method, template, world)
    assert r.status_code == 404, r.text
    _no_data(r)


@pytest.mark.parametrize(
    ("method", "template"), sorted(k for k, c in CASES.items() if c.scope == "manage")
)
def test_member_cannot_manage(world: World, method: str, template: str) -> None:
    r = _call(world.clients["carol"], method, template, world)
    assert r.status_code == 403, r.text
    _no_data(r)


@pytest.mark.parametrize(
    ("method", "template"), sorted(k for k, c in CASES.items() if c.scope == "admin")
)
def test_user_cannot_administer(world: World, method: str, template: str) -> None:
    r = _call(world.clients["alice"], method, template, world)
    assert r.status_code == 403, r.text
    _no_data(r)


@pytest.mark.parametrize(
    ("method", "template"),
    sorted(k for k, c in CASES.items() if c.scope == "project" and k[0] == "GET"),
)
@pytest.mark.parametrize("who", ["alice", "carol", "root", "alice-token"])
def test_owner_member_admin_and_token_read_the_project(
    world: World, method: str, template: str, who: str
) -> None:
    r = _call(world.clients[who], method, template, world)
    assert r.status_code == 200, r.text


def test_other_users_token_cannot_be_revoked(world: World) -> None:
    r = world.clients["bob"].delete(f"/api/tokens/{world.token_id}")
    assert r.status_code == 404
    assert world.clients["alice-token"].get("/api/auth/me").json()["username"] == "alice"


def test_project_lists_are_per_user(world: World) -> None:
    names = {
        who: {p["name"] for p in world.clients[who].get("/api/projects").json()}
        for who in ("alice", "bob", "carol", "root")
    }
    assert names["alice"] == {SECRET_NAME}
    assert names["bob"] == {"bobs"}
    assert names["carol"] == {SECRET_NAME}
    assert names["root"] == {SECRET_NAME, "bobs"}


def test_reads_by_others_return_no_file_or_log(world: World) -> None:
    bob = world.clients["bob"]
    base = f"/api/projects/{world.project_id}"
    for url in (f"{base}/files/content?path=notes.txt", f"{base}/runs/1/log", f"{base}/events"):
        r = bob.get(url)
        assert r.status_code == 404
        assert SECRET_NAME not in r.text
    alice = world.clients["alice"]
    assert SECRET_NAME in alice.get(f"{base}/files/content?path=notes.txt").text
    assert SECRET_NAME in alice.get(f"{base}/runs/1/log").json()["text"]
