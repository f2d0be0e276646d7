"""Runs through the API, on real processes (the test plugin's ``test-squares``): create with
validation, launch, live events, run page data, log, files, copy, workflow export/import,
restart, stop/continue, delete."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from webtools import add_user, client, new_app, plugin_installed

TERMINAL = {"finished", "failed", "aborted"}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    with plugin_installed():
        app = new_app(tmp_path / "server", sse_max_s=90.0)
        add_user(app, "alice")
        yield app


def _wait(c: TestClient, url: str, done: set[str], timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run: dict[str, Any] = c.get(url).json()
        if run["status"] in done:
            return run
        time.sleep(0.2)
    raise TimeoutError(f"{url} not {done} after {timeout_s} s")


def _events(c: TestClient, url: str, run_id: int) -> list[tuple[str, dict[str, Any]]]:
    """Server-sent events of a project until ``run_id`` ends."""
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    with c.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                events.append((kind, data))
                if kind == "status" and data["run"] == run_id and data["status"] in TERMINAL:
                    break
    return events


def test_catalogue_validation_and_nothing_recorded_when_invalid(app: FastAPI) -> None:
    c = client(app, "alice")
    catalogue = c.get("/api/protocols", params={"q": "squares"}).json()
    assert [p["id"] for p in catalogue] == ["test-squares"]
    schema = catalogue[0]["params_schema"]["properties"]
    assert schema["n_items"]["default"] == 6 and schema["sleep_s"]["unit"] == "s"
    assert schema["scale"]["group"] == "Advanced"
    testing = c.get("/api/protocols", params={"category": "testing"}).json()
    assert {"test-squares", "test-sum"} <= {p["id"] for p in testing}
    assert c.get("/api/protocols/test-sum").json()["inputs"]["table"]["types"] == ["Table"]
    assert c.get("/api/protocols/test-sqares").status_code == 404

    base = f"/api/projects/{c.post('/api/projects', json={'name': 'p'}).json()['id']}"
    bad = {"protocol": "test-squares", "params": {"n_items": 0, "colour": "red"}}
    checked = c.post(f"{base}/runs/validate", json=bad).json()
    assert checked["valid"] is False and len(checked["problems"]) == 2
    assert any("n_items" in p for p in checked["problems"])
    r = c.post(f"{base}/runs", json=bad)
    assert r.status_code == 422 and r.json()["detail"] == "the run is not valid"
    assert any("colour" in p for p in r.json()["problems"])
    r = c.post(f"{base}/runs", json={"protocol": "test-sum", "inputs": {"table": ["7.table"]}})
    assert r.status_code == 422 and "run 7 does not exist" in " ".join(r.json()["problems"])
    r = c.post(f"{base}/runs", json={"protocol": "test-sum", "inputs": {"table": ["x"]}})
    assert r.status_code == 422 and "not RUN or RUN.OUTPUT" in r.json()["problems"][0]
    r = c.post(f"{base}/runs", json={"protocol": "no-such-protocol"})
    assert r.status_code == 422 and "unknown protocol" in r.json()["detail"]
    assert c.get(f"{base}/runs").json() == []
    ok = c.post(f"{base}/runs/validate", json={"protocol": "test-squares"}).json()
    assert ok == {"valid": True, "problems": []}


def test_launch_watch_inspect_copy_export_restart_delete(app: FastAPI) -> None:
    c = client(app, "alice")
    base = f"/api/projects/{c.post('/api/projects', json={'name': 'p'}).json()['id']}"
    body = {"protocol": "test-squares", "params": {"n_items": 3}, "seed": 7, "launch": True}
    created = c.post(f"{base}/runs", json=body)
    assert created.status_code == 201
    run_id = created.json()["id"]
    assert created.json()["status"] in ("queued", "running", "finished")

    events = _events(c, f"{base}/events?log_run={run_id}", run_id)
    statuses = [d["status"] for k, d in events if k == "status" and d["run"] == run_id]
    assert statuses[-1] == "finished"
    done_counts = [d["steps_done"] for k, d in events if k == "status"]
    assert done_counts == sorted(done_counts) and done_counts[-1] == 3
    streamed_log = "".join(d["text"] for k, d in events if k == "log")

    run = c.get(f"{base}/runs/{run_id}").json()
    assert run["status"] == "finished" and run["seed"] == 7
    assert run["params"] == {"n_items": 3, "sleep_s": 0.0, "fail_item": -1, "scale": 1.0}
    assert run["citations"] == ["cryostack test suite"]
    assert run["steps_by_status"] == {"done": 3} and len(run["steps"]) == 3
    assert run["duration_s"] > 0 and run["software"]
    assert [h["status"] for h in run["history"]][:2] == ["draft", "queued"]
    (output,) = run["outputs"]
    assert (output["name"], output["n_items"]) == ("table", 3)

    log = c.get(f"{base}/runs/{run_id}/log").json()
    assert log["text"] and log["next_offset"] == log["size"] == len(log["text"].encode())
    assert streamed_log and log["text"].startswith(streamed_log[:20])
    tail = c.get(f"{base}/runs/{run_id}/log", params={"offset": log["next_offset"]}).json()
    assert tail["text"] == ""

    data = c.get(f"{base}/files/content", params={"path": output["path"]})
    table = np.load(io.BytesIO(data.content))
    assert table.shape == (3, 8) and np.all(table >= 0)

    copy = c.post(f"{base}/runs/{run_id}/copy", json={"params": {"scale": 2.0}, "label": "x2"})
    assert copy.status_code == 201
    copied = copy.json()
    assert copied["status"] == "draft" and copied["label"] == "x2"
    assert copied["params"] == {**run["params"], "scale": 2.0}

    summed = c.post(
        f"{base}/runs", json={"protocol": "test-sum", "inputs": {"table": [str(run_id)]}}
    )
    assert summed.status_code == 201
    workflow = c.get(f"{base}/workflow").json()
    assert [r["protocol"] for r in workflow["runs"]] == ["test-squares", "test-squares", "test-sum"]
    assert workflow["runs"][2]["inputs"] == {"table": [{"run": "r1", "output": "table"}]}
    other = f"/api/projects/{c.post('/api/projects', json={'name': 'q'}).json()['id']}"
    imported = c.post(f"{other}/workflow", json=workflow)
    assert imported.status_code == 201 and imported.json() == {"runs": [1, 2, 3]}
    assert c.get(f"{other}/runs/3").json()["inputs"] == [
        {"name": "table", "run": 1, "output": "table"}
    ]
    bad = c.post(f"{other}/workflow", json={"format": "something else"})
    assert bad.status_code == 409 and "not a cryostack workflow" in bad.json()["detail"]
    assert c.post(f"{other}/workflow", json={**workflow, "runs": [{"key": 1}]}).status_code in (
        409,
        422,
    )

    first_hash = output["content_hash"]
    assert c.post(f"{base}/runs/{run_id}/restart").status_code == 200
    again = _wait(c, f"{base}/runs/{run_id}", TERMINAL)
    assert again["status"] == "finished"
    assert again["outputs"][0]["content_hash"] == first_hash  # same seed, same numbers

    r = c.delete(f"{base}/runs/{run_id}")
    assert r.status_code == 409 and "feeds runs" in r.json()["detail"]
    sum_id = summed.json()["id"]
    folders = c.get(f"{base}/files", params={"path": "runs"}).json()["entries"]
    assert f"{sum_id:06d}_test-sum" in {e["name"] for e in folders}
    assert c.delete(f"{base}/runs/{sum_id}").json() == {"deleted": sum_id}
    assert c.get(f"{base}/runs/{sum_id}").status_code == 404
    folders = c.get(f"{base}/files", params={"path": "runs"}).json()["entries"]
    assert f"{sum_id:06d}_test-sum" not in {e["name"] for e in folders}
    assert c.post(f"{base}/runs/{run_id}/launch").status_code == 409  # not a draft


def test_stop_continue_and_project_deletion_waits_for_idle(app: FastAPI) -> None:
    c = client(app, "alice")
    project = c.post("/api/projects", json={"name": "p"}).json()
    base = f"/api/projects/{project['id']}"
    body = {"protocol": "test-squares", "params": {"n_items": 4, "sleep_s": 1.0}}
    run_id = c.post(f"{base}/runs", json=body).json()["id"]
    assert c.post(f"{base}/runs/{run_id}/launch").json()["status"] in ("queued", "running")
    assert c.post(f"{base}/runs/{run_id}/stop").json()["status"] == "aborted"
    assert c.post(f"{base}/runs/{run_id}/continue").json()["status"] in ("queued", "running")
    r = c.delete(base)
    assert r.status_code == 409 and f"runs {run_id} are active" in r.json()["detail"]
    assert c.delete(f"{base}/runs/{run_id}").status_code == 409
    assert c.post(f"{base}/runs/{run_id}/stop").json()["status"] == "aborted"
    history = [h["status"] for h in c.get(f"{base}/runs/{run_id}").json()["history"]]
    assert history == ["draft", "queued", "aborted", "queued", "aborted"]
    folders = list(app.state.cryostack.settings.projects_root.iterdir())
    assert len(folders) == 1
    assert c.delete(base).json() == {"deleted": project["id"]}
    assert c.get(base).status_code == 404
    assert not folders[0].exists()
