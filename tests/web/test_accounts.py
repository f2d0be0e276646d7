"""Accounts: first admin, argon2 passwords, session cookies, CSRF, rate-limited login, API
tokens, user administration."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import update
from webtools import PASSWORD, add_user, client, fast_settings, new_app, state_of, token_client

from cryostack.web.accounts import ensure_admin
from cryostack.web.deps import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from cryostack.web.security import password_hasher, token_hash, verify_password
from cryostack.web.server import bootstrap
from cryostack.web.store import ApiToken, LoginSession, ServerStore, utcnow


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return new_app(tmp_path / "server", login_max_failures=3, login_window_s=600)


def test_first_start_creates_one_admin_with_a_generated_password(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "server")
    name, password = bootstrap(settings)
    assert name == "admin" and password is not None and len(password) >= 20
    assert bootstrap(settings, "another-password") == ("", None)  # only on first start
    store = ServerStore.open(settings.database_url)
    users = store.users()
    assert [(u.username, u.role) for u in users] == [("admin", "admin")]
    hasher = password_hasher(1, 64)
    assert users[0].password_hash.startswith("$argon2id$")
    assert password not in users[0].password_hash
    assert verify_password(hasher, users[0].password_hash, password)
    assert not verify_password(hasher, users[0].password_hash, password + "x")
    store.close()


def test_first_admin_password_from_the_command_line(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path / "server")
    assert bootstrap(settings, "given-password-1") == ("admin", None)
    app = new_app(tmp_path / "server")
    me = client(app, "admin", "given-password-1").get("/api/auth/me").json()
    assert me["role"] == "admin" and me["via"] == "session"
    with pytest.raises(ValueError, match="at least 8"):
        ensure_admin(
            ServerStore.open(fast_settings(tmp_path / "s2").database_url),
            password_hasher(1, 64),
            "short",
        )


def test_default_hasher_is_argon2id_with_64_mib() -> None:
    digest = password_hasher().hash("a password")
    assert digest.startswith("$argon2id$v=19$m=65536,t=3,p=1$")


def test_login_sets_httponly_samesite_cookies_and_logout_ends_the_session(app: FastAPI) -> None:
    add_user(app, "alice")
    c = client(app)
    r = c.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200
    cookies = {h.split("=", 1)[0]: h for h in r.headers.get_list("set-cookie")}
    assert "HttpOnly" in cookies[SESSION_COOKIE] and "SameSite=lax" in cookies[SESSION_COOKIE]
    assert "HttpOnly" not in cookies[CSRF_COOKIE]
    assert "Secure" not in cookies[SESSION_COOKIE]  # plain HTTP here
    session = c.cookies[SESSION_COOKIE]
    stored = state_of(app).store.session_by_hash(token_hash(session))
    assert stored is not None and stored[0].token_hash != session  # only the hash is stored
    c.headers[CSRF_HEADER] = r.json()["csrf_token"]
    assert c.get("/api/auth/me").json()["username"] == "alice"
    assert c.post("/api/auth/logout").status_code == 200
    replay = client(app)
    replay.cookies[SESSION_COOKIE] = session
    assert replay.get("/api/auth/me").status_code == 401


def test_cookies_are_secure_under_https(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    app = new_app(tmp_path / "server", tls_cert=cert, tls_key=key)
    add_user(app, "alice")
    r = client(app).post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    assert all("Secure" in h for h in r.headers.get_list("set-cookie"))


def test_wrong_password_and_unknown_user_give_the_same_answer(app: FastAPI) -> None:
    add_user(app, "alice")
    c = client(app)
    wrong = c.post("/api/auth/login", json={"username": "alice", "password": "nope-nope"})
    unknown = c.post("/api/auth/login", json={"username": "nobody", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "wrong user name or password"}
    assert SESSION_COOKIE not in c.cookies


def test_login_is_rate_limited_per_user_and_address(app: FastAPI) -> None:
    add_user(app, "alice")
    add_user(app, "bob")
    c = client(app)
    bad = {"username": "alice", "password": "guess-guess"}
    assert [c.post("/api/auth/login", json=bad).status_code for _ in range(3)] == [401] * 3
    r = c.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 429  # even the right password waits now
    assert 590 <= int(r.headers["Retry-After"]) <= 600
    assert "try again in" in r.json()["detail"]
    # another user from the same address is not locked out
    assert c.post("/api/auth/login", json={"username": "bob", "password": PASSWORD}).is_success
    # the failures age out of the window
    store = state_of(app).store
    from cryostack.web.store import LoginAttempt

    with store.session(write=True) as s:
        s.execute(update(LoginAttempt).values(at=utcnow() - timedelta(seconds=601)))
    assert client(app, "alice").get("/api/auth/me").status_code == 200


def test_successful_login_resets_the_failure_count(app: FastAPI) -> None:
    add_user(app, "alice")
    c = client(app)
    bad = {"username": "alice", "password": "guess-guess"}
    for _ in range(2):
        assert c.post("/api/auth/login", json=bad).status_code == 401
    client(app, "alice")
    for _ in range(2):
        assert c.post("/api/auth/login", json=bad).status_code == 401
    assert client(app, "alice").get("/api/auth/me").status_code == 200


def test_login_takes_json_only_so_cross_site_forms_cannot_sign_in(app: FastAPI) -> None:
    add_user(app, "alice")
    c = client(app)
    as_text = f'{{"username": "alice", "password": "{PASSWORD}"}}'
    for content_type, body in (
        ("text/plain", as_text),
        ("application/x-www-form-urlencoded", f"username=alice&password={PASSWORD}"),
    ):
        r = c.post("/api/auth/login", content=body, headers={"content-type": content_type})
        assert r.status_code == 422 and SESSION_COOKIE not in c.cookies


def test_state_changing_requests_need_the_csrf_token(app: FastAPI) -> None:
    add_user(app, "alice")
    c = client(app, "alice")
    good = c.headers.pop(CSRF_HEADER)
    r = c.post("/api/projects", json={"name": "p"})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = c.post("/api/projects", json={"name": "p"}, headers={CSRF_HEADER: good[:-1] + "x"})
    assert r.status_code == 403
    assert c.get("/api/projects").json() == []  # nothing was created; reads need no token
    other = client(app, "alice")  # another session's token does not fit this session
    r = c.post(
        "/api/projects", json={"name": "p"}, headers={CSRF_HEADER: other.headers[CSRF_HEADER]}
    )
    assert r.status_code == 403
    r = c.post("/api/projects", json={"name": "p"}, headers={CSRF_HEADER: good})
    assert r.status_code == 201


def test_api_tokens_authenticate_without_csrf_and_can_be_revoked(app: FastAPI) -> None:
    add_user(app, "alice")
    c = client(app, "alice")
    created = c.post("/api/tokens", json={"name": "laptop cli"})
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("cst_") and created.json()["prefix"] == secret[:10]
    listed = c.get("/api/tokens").json()
    assert [t["name"] for t in listed] == ["laptop cli"] and "token" not in listed[0]
    cli = token_client(app, secret)
    assert cli.get("/api/auth/me").json() == {**cli.get("/api/auth/me").json(), "via": "token"}
    assert cli.post("/api/projects", json={"name": "from the cli"}).status_code == 201
    assert c.get("/api/tokens").json()[0]["last_used_at"] is not None
    assert c.delete(f"/api/tokens/{created.json()['id']}").status_code == 200
    r = cli.get("/api/auth/me")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert token_client(app, "cst_forged").get("/api/projects").status_code == 401
    basic = client(app)
    assert basic.get("/api/auth/me", headers={"Authorization": "Basic abc"}).status_code == 401


def test_expired_token_and_expired_session_are_refused(app: FastAPI) -> None:
    add_user(app, "alice")
    c = client(app, "alice")
    secret = c.post("/api/tokens", json={"name": "t", "expires_days": 1}).json()["token"]
    assert token_client(app, secret).get("/api/auth/me").status_code == 200
    with state_of(app).store.session(write=True) as s:
        past = utcnow() - timedelta(seconds=1)
        s.execute(update(ApiToken).values(expires_at=past))
        s.execute(update(LoginSession).values(expires_at=past))
    assert token_client(app, secret).get("/api/auth/me").status_code == 401
    assert c.get("/api/auth/me").status_code == 401


def test_admin_manages_users(app: FastAPI) -> None:
    add_user(app, "root", role="admin")
    admin = client(app, "root")
    r = admin.post("/api/users", json={"username": "dana"})
    assert r.status_code == 201
    generated = r.json()["password"]
    assert len(generated) >= 20
    dana = client(app, "dana", generated)
    assert dana.get("/api/users").status_code == 403
    assert admin.post("/api/users", json={"username": "dana"}).status_code == 409
    r = admin.post("/api/users", json={"username": "../evil", "password": "long-enough"})
    assert r.status_code == 422
    r = admin.post("/api/users", json={"username": "erin", "password": "short"})
    assert r.status_code == 422 and "at least 8" in r.json()["detail"]
    dana_id = r = next(u["id"] for u in admin.get("/api/users").json() if u["username"] == "dana")
    assert admin.patch(f"/api/users/{dana_id}", json={"active": False}).json()["active"] is False
    assert dana.get("/api/auth/me").status_code == 401  # sessions end with the account
    r = client(app).post("/api/auth/login", json={"username": "dana", "password": generated})
    assert r.status_code == 401
    admin.patch(f"/api/users/{dana_id}", json={"active": True, "password": "new-password-9"})
    assert client(app, "dana", "new-password-9").get("/api/auth/me").status_code == 200
    root_id = next(u["id"] for u in admin.get("/api/users").json() if u["username"] == "root")
    assert admin.patch(f"/api/users/{root_id}", json={"role": "user"}).status_code == 409
    assert admin.patch("/api/users/999", json={"role": "user"}).status_code == 404


def test_changing_ones_password_ends_all_sessions(app: FastAPI) -> None:
    add_user(app, "alice")
    c, other = client(app, "alice"), client(app, "alice")
    body = {"current_password": "not-it-at-all", "new_password": "brand-new-pw"}
    assert c.post("/api/auth/password", json=body).status_code == 403
    body["current_password"] = PASSWORD
    assert c.post("/api/auth/password", json=body).status_code == 200
    assert other.get("/api/auth/me").status_code == 401
    assert client(app, "alice", "brand-new-pw").get("/api/auth/me").status_code == 200
