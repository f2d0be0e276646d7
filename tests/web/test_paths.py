"""Paths from clients never escape the project's folder: ``..``, absolute, encoded, symlinks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from webtools import add_user, client, new_app

from cryostack.web.security import PathEscapeError, resolve_inside


def test_resolve_inside(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "a.txt").write_text("a")
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", root / "runs" / "escape.txt")
    os.symlink(root / "runs" / "a.txt", root / "inside-link.txt")
    assert resolve_inside(root, "runs/a.txt") == (root / "runs" / "a.txt").resolve()
    assert resolve_inside(root, "runs/../runs/./a.txt") == (root / "runs" / "a.txt").resolve()
    assert resolve_inside(root, "") == root.resolve()
    assert resolve_inside(root, "inside-link.txt") == (root / "runs" / "a.txt").resolve()
    for bad in (
        "../secret.txt",
        "runs/../../secret.txt",
        "/etc/passwd",
        str(tmp_path / "secret.txt"),
        "runs/escape.txt",
        "..\\secret.txt",
        "C:/Windows",
        "runs/a.txt\x00.png",
    ):
        with pytest.raises(PathEscapeError):
            resolve_inside(root, bad)


@dataclass
class Setup:
    c: TestClient
    base: str
    outside: Path
    other_folder: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("paths")
    app = new_app(tmp / "server")
    add_user(app, "alice")
    c = client(app, "alice")
    project_id = c.post("/api/projects", json={"name": "p"}).json()["id"]
    state = app.state.cryostack
    root = state.open_project(state.store.project(project_id)).root
    (root / "data").mkdir()
    (root / "data" / "ok.txt").write_text("fine")
    outside = tmp / "secret.txt"
    outside.write_text("TOP SECRET")
    os.symlink(outside, root / "data" / "link-out.txt")
    os.symlink(tmp, root / "data" / "dir-out")
    # another project on the same server: its files are outside this project too
    other = c.post("/api/projects", json={"name": "other"}).json()["id"]
    other_root = state.open_project(state.store.project(other)).root
    (other_root / "theirs.txt").write_text("TOP SECRET of the other project")
    yield Setup(c, f"/api/projects/{project_id}", outside, other_root.name)


def test_files_inside_the_project_are_served(setup: Setup) -> None:
    r = setup.c.get(f"{setup.base}/files/content", params={"path": "data/ok.txt"})
    assert r.status_code == 200 and r.text == "fine"
    listing = setup.c.get(f"{setup.base}/files", params={"path": "data"}).json()
    assert listing["path"] == "data"
    kinds = {e["name"]: e["type"] for e in listing["entries"]}
    assert kinds == {"ok.txt": "file", "link-out.txt": "link", "dir-out": "link"}
    top = {e["name"] for e in setup.c.get(f"{setup.base}/files").json()["entries"]}
    assert {"cryostack-project.json", "runs", "data"} <= top


@pytest.mark.parametrize(
    "path",
    [
        "../../secret.txt",
        "data/../../../secret.txt",
        "/etc/passwd",
        "data/link-out.txt",
        "data/dir-out/secret.txt",
        "..\\..\\secret.txt",
        "data/ok.txt\x00",
    ],
)
def test_traversal_is_refused(setup: Setup, path: str) -> None:
    for route in ("files/content", "files"):
        r = setup.c.get(f"{setup.base}/{route}", params={"path": path})
        assert r.status_code == 400, (route, path, r.text)
        assert "TOP SECRET" not in r.text and r.json()["detail"]


@pytest.mark.parametrize(
    "query",
    [
        "path=..%2F..%2Fsecret.txt",
        "path=%2E%2E/%2E%2E/secret.txt",
        "path=%2Fetc%2Fpasswd",
        "path=..%252F..%252Fsecret.txt",  # double-encoded: a strange name inside, not found
        "path=data%2Fdir-out%2Fsecret.txt",
    ],
)
def test_encoded_traversal_is_refused(setup: Setup, query: str) -> None:
    r = setup.c.get(f"{setup.base}/files/content?{query}")
    assert r.status_code in (400, 404)
    assert "TOP SECRET" not in r.text


def test_other_projects_files_are_outside(setup: Setup) -> None:
    for rel in ("../", f"../{setup.other_folder}"):
        assert setup.c.get(f"{setup.base}/files", params={"path": rel}).status_code == 400
    theirs = f"../{setup.other_folder}/theirs.txt"
    r = setup.c.get(f"{setup.base}/files/content", params={"path": theirs})
    assert r.status_code == 400 and "TOP SECRET" not in r.text
