"""End-to-end tests of the web front end in a real headless Chromium (Debian's, driven by
Playwright): a real ``cryostack serve`` process on a free localhost port with a fresh data root
and the test plugin's protocols, the built single-page app, sign-in, a project, protocol forms
generated from parameter schemas, live run status and logs, workflow export and import.

Screenshots are saved under ``test-artifacts/e2e/``. Outside CI the tests skip when chromium,
the ``playwright`` package or the built front end (``npm run build`` in web/frontend) is
missing; in CI (``CI=true``) that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest

from helpers import in_ci, require_program

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[3]
PLUGIN_DIR = REPO / "tests" / "data" / "plugin"
STATIC_INDEX = REPO / "src" / "cryostack" / "web" / "static" / "index.html"
ARTIFACTS = REPO / "test-artifacts" / "e2e"
ADMIN_PASSWORD = "e2e-admin-password"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000


def _missing(what: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{what} is required in CI")
    pytest.skip(f"{what} is missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    url: str
    data_root: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``cryostack serve`` in a subprocess, with the built front end and the test plugin."""
    if not STATIC_INDEX.is_file():
        _missing(f"the built front end ({STATIC_INDEX}; run npm run build in web/frontend)")
    root = tmp_path_factory.mktemp("e2e-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYOSTACK_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN_DIR), env.get("PYTHONPATH")])),
            "CRYOSTACK_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CRYOSTACK_ARGON2_TIME_COST": "1",
            "CRYOSTACK_ARGON2_MEMORY_KIB": "1024",
            "CRYOSTACK_SSE_POLL_S": "0.2",
            "CRYOSTACK_SSE_MAX_S": "20",
            "CRYOSTACK_RUN_WORKERS": "1",
        }
    )
    code = "import typer; from cryostack.cli.serve import serve; typer.run(serve)"
    log_file = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--data-root", str(root / "data"), "--port", str(port)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/api/health", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_file.flush()
                    output = (root / "server.log").read_text(errors="replace")
                    pytest.fail(f"the server did not start:\n{output}")
                time.sleep(0.2)
        yield Server(url, root / "data")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, through Playwright (never a downloaded browser)."""
    chromium = require_program("chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("the Python package playwright")
    expect.set_options(timeout=TIMEOUT_MS)  # the default 5 s is short for a loaded 2-core CI
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (own cookies) and page; console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield new_page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, server: Server, username: str, password: str) -> None:
    page.fill("#login-username", username)
    page.fill("#login-password", password)
    page.click("form.login button[type=submit]")


def test_sign_in_errors_and_rate_limit(page: Page, server: Server) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.url}/projects/1")
    expect(page).to_have_url(f"{server.url}/login?next=%2Fprojects%2F1")  # no session yet
    sign_in(page, server, "admin", "not the password")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    shot(page, "01-login-error")
    for _ in range(4):  # the server allows 5 failures per user and address
        sign_in(page, server, "mallory", "guess")
        expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
        page.locator("#login-error").evaluate("el => { el.textContent = '' }")
    sign_in(page, server, "mallory", "guess")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    sign_in(page, server, "mallory", "guess")
    expect(page.locator("#login-error")).to_contain_text("Too many failed sign-ins. Try again in")


def _watch_statuses(page: Page) -> None:
    """Record every (run, status) the graph shows, and mark the document so a reload shows."""
    page.evaluate(
        """() => {
        window.__seen = [];
        window.__noReload = true;
        const box = document.querySelector('#workflow-graph');
        const record = () => box.querySelectorAll('g.run-node').forEach((g) => {
            const key = g.getAttribute('data-run') + ':' + g.getAttribute('data-status');
            if (!window.__seen.includes(key)) window.__seen.push(key);
        });
        new MutationObserver(record).observe(box, {
            subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'],
        });
        record();
    }"""
    )


def _launch_squares(page: Page) -> None:
    from playwright.sync_api import expect

    page.fill("#protocol-search", "squares")
    catalogue = page.locator("#catalogue")
    expect(catalogue.locator("[data-protocol]")).to_have_count(1)
    catalogue.locator("[data-protocol=test-squares]").click()
    form = page.locator("#protocol-form form[data-protocol=test-squares]")
    # the form comes from the parameter schema: groups, units, help, defaults, bounds
    expect(form.locator("legend")).to_have_text(["General", "Advanced"])
    expect(form.locator("label[for=param-sleep_s]")).to_have_text("Sleep S (s)")
    expect(form.locator("#param-n_items-help")).to_have_text(
        "number of items · ≥ 1, ≤ 1000 · default: 6"
    )
    expect(form.locator("input[name=n_items]")).to_have_value("6")
    expect(form.locator("#form-status")).to_have_text("Ready to launch.")  # server validated
    form.locator("input[name=n_items]").fill("0")
    expect(form.locator("[data-error-for=n_items]")).to_have_text("must be ≥ 1")
    form.locator("#launch-run").click()
    expect(form.locator("#form-status")).to_have_text("Fix the marked fields.")
    shot(page, "03-form-invalid")
    form.locator("input[name=n_items]").fill("2")
    form.locator("input[name=sleep_s]").fill("0.2")
    expect(form.locator("[data-error-for=n_items]")).to_have_text("")
    expect(form.locator("#form-status")).to_have_text("Ready to launch.")
    form.locator("#launch-run").click()
    expect(form.locator("#form-status")).to_have_text("Launched run #1.")


def _launch_sum(page: Page) -> None:
    from playwright.sync_api import expect

    page.fill("#protocol-search", "")
    page.locator("#catalogue [data-protocol=test-sum]").click()
    form = page.locator("#protocol-form form[data-protocol=test-sum]")
    picker = form.locator("select[name=input-table]")
    # only Table outputs are offered: run 1's table, after the placeholder
    expect(picker.locator("option")).to_have_count(2)
    expect(picker.locator("option").nth(1)).to_have_text("#1 test-squares → table (Table, 2 items)")
    form.locator("#launch-run").click()
    expect(form.locator("[data-error-for=input-table]")).to_have_text("choose a Table output")
    picker.select_option("1.table")
    form.locator("input[name=offset]").fill("10")
    expect(form.locator("#form-status")).to_have_text("Ready to launch.")
    form.locator("#launch-run").click()
    expect(form.locator("#form-status")).to_have_text("Launched run #2.")


def test_project_workflow_run_page_export_and_import(
    page: Page, server: Server, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    start = time.monotonic()
    page.goto(f"{server.url}/")
    expect(page).to_have_url(f"{server.url}/login?next=%2F")
    sign_in(page, server, "admin", ADMIN_PASSWORD)
    expect(page.locator("h1")).to_have_text("Projects")
    expect(page.locator("#current-user")).to_contain_text("admin (admin)")

    # create a project: it opens with an empty workflow
    page.fill("#new-project-name", "E2E project")
    page.click("#create-project button[type=submit]")
    expect(page).to_have_url(f"{server.url}/projects/1")
    expect(page.locator("h1")).to_contain_text("E2E project")
    expect(page.locator("#live-state")).to_have_text("live")
    shot(page, "02-empty-project")

    # launch test-squares through its generated form and watch it finish, live
    _watch_statuses(page)
    _launch_squares(page)
    finished_1 = page.locator('g.run-node[data-run="1"][data-status="finished"]')
    expect(finished_1).to_be_visible()
    seen = page.evaluate("window.__seen")
    assert seen[-1] == "1:finished" and len(seen) >= 2, seen  # it went through earlier states
    assert page.evaluate("window.__noReload") is True  # updated in place, not reloaded

    # a second run that takes run 1's table: the graph shows the provenance link
    _launch_sum(page)
    expect(page.locator('g.run-node[data-run="2"][data-status="finished"]')).to_be_visible()
    expect(page.locator('path.edge[data-from="1"][data-to="2"]')).to_have_count(1)
    shot(page, "04-workflow-finished")

    # the run page of run 1: params, outputs, steps, citations, software, live log
    finished_1.click()
    expect(page).to_have_url(f"{server.url}/projects/1/runs/1")
    expect(page.locator("#run-status")).to_have_text("finished")
    expect(page.locator("#run-log")).to_contain_text("step item-001 done")
    expect(page.locator("#run-params")).to_contain_text("n_items")
    expect(page.locator("#run-outputs tr[data-output=table]")).to_contain_text("Table")
    expect(page.locator("#run-steps tbody tr")).to_have_count(2)
    expect(page.locator("#run-citations")).to_contain_text("cryostack test suite")
    expect(page.locator("#run-software tr").first).to_be_visible()
    expect(page.locator("#run-restart")).to_be_enabled()
    expect(page.locator("#run-stop")).to_be_disabled()
    expect(page.locator("#run-delete")).to_be_enabled()
    shot(page, "05-run-page")

    expect(page.locator("#run-timings")).not_to_contain_text("[object")

    # copy run 1: a draft with the same parameters; stop it (aborted), then delete it
    page.click("#run-copy")
    expect(page).to_have_url(f"{server.url}/projects/1/runs/3")
    expect(page.locator("#run-status")).to_have_text("draft")
    expect(page.locator("#run-params")).to_contain_text("sleep_s0.2")
    expect(page.locator("#run-launch")).to_be_enabled()
    page.click("#run-stop")
    expect(page.locator("#run-status")).to_have_text("aborted")
    expect(page.locator("#run-continue")).to_be_enabled()
    expect(page.locator("#run-launch")).to_be_disabled()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#run-delete")
    expect(page).to_have_url(f"{server.url}/projects/1")
    expect(page.locator("g.run-node")).to_have_count(2)

    # restart run 2 from its run page: the badge follows it live back to finished
    page.locator('g.run-node[data-run="2"]').click()
    expect(page.locator("#run-status")).to_have_text("finished")
    page.click("#run-restart")
    expect(page.locator("#run-history")).to_contain_text("restart")
    expect(page.locator("#run-status")).to_have_text("finished")
    expect(page.locator("#run-history li").last).to_contain_text("finished")
    page.click("#back-to-project")
    expect(page.locator('g.run-node[data-run="2"][data-status="finished"]')).to_be_visible()

    # export the workflow, then import it: two new drafts linked like the originals
    with page.expect_download() as download_info:
        page.click("#export-workflow")
    download = download_info.value
    assert download.suggested_filename == "e2e-project-workflow.json"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    workflow: dict[str, Any] = json.loads(saved.read_text())
    runs = workflow["runs"]
    assert [r["protocol"] for r in runs] == ["test-squares", "test-sum"]
    assert runs[0]["params"]["n_items"] == 2 and runs[1]["params"]["offset"] == 10
    assert runs[1]["inputs"] == {"table": [{"run": "r1", "output": "table"}]}
    page.set_input_files("#import-workflow", str(saved))
    message = page.locator("#workflow-message")
    expect(message).to_have_text(re.compile(r"Imported 2 runs as drafts: #\d+, #\d+\."))
    new_1, new_2 = (int(n) for n in re.findall(r"#(\d+)", message.inner_text()))
    assert new_1 > 2 and new_2 > new_1
    expect(page.locator(f'g.run-node[data-run="{new_2}"][data-status="draft"]')).to_be_visible()
    expect(page.locator(f'path.edge[data-from="{new_1}"][data-to="{new_2}"]')).to_have_count(1)
    shot(page, "06-imported")

    # a project that does not exist (or is not ours) is an error, never data; then sign out
    page.goto(f"{server.url}/projects/999")
    expect(page.locator("main .form-error")).to_have_text("project 999 not found")
    page.click("#sign-out")
    expect(page).to_have_url(f"{server.url}/login")
    page.goto(f"{server.url}/")
    expect(page).to_have_url(f"{server.url}/login?next=%2F")
    assert time.monotonic() - start < 60
