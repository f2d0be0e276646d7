"""Sign in and out, the current user, API tokens, and user administration (admins)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from cryostack.web.accounts import create_user, set_password
from cryostack.web.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    AdminUser,
    CurrentUser,
    State,
)
from cryostack.web.security import (
    API_TOKEN_PREFIX,
    new_token,
    token_hash,
    verify_password,
)
from cryostack.web.store import ApiToken, User, utcnow

router = APIRouter(prefix="/api", tags=["accounts"])


class LoginBody(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class PasswordBody(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class TokenBody(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="what the token is for")
    expires_days: int | None = Field(None, ge=1, le=3650, description="default: never")


class UserBody(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str | None = Field(None, max_length=1024, description="default: generated")
    role: Literal["admin", "user"] = "user"


class UserUpdate(BaseModel):
    role: Literal["admin", "user"] | None = None
    active: bool | None = None
    password: str | None = Field(None, max_length=1024)


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "active": user.active,
        "created_at": user.created_at,
    }


def token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
    }


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/auth/login")
def login(body: LoginBody, request: Request, response: Response, state: State) -> dict[str, Any]:
    """Sign in: sets the HttpOnly session cookie and the CSRF cookie; returns the CSRF token."""
    ip = _client_ip(request)
    retry_s = state.rate_limit.retry_after_s(state.store, body.username, ip)
    if retry_s:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed sign-ins; try again in {retry_s} s",
            headers={"Retry-After": str(retry_s)},
        )
    user = state.store.user_by_name(body.username)
    if user is None:
        verify_password(state.hasher, state.dummy_hash, body.password)  # same time
        ok = False
    else:
        ok = user.active and verify_password(state.hasher, user.password_hash, body.password)
    state.store.record_login(body.username, ip, ok)
    if not ok or user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    if state.hasher.check_needs_rehash(user.password_hash):
        state.store.update_user(user.id, password_hash=state.hasher.hash(body.password))
    session_token, csrf_token = new_token(), new_token()
    ttl_s = state.settings.session_ttl_s
    state.store.add_session(user.id, token_hash(session_token), token_hash(csrf_token), ttl_s)
    secure = state.settings.cookies_secure
    response.set_cookie(
        SESSION_COOKIE, session_token, max_age=ttl_s, httponly=True, samesite="lax", secure=secure
    )
    response.set_cookie(
        CSRF_COOKIE, csrf_token, max_age=ttl_s, httponly=False, samesite="strict", secure=secure
    )
    return {"user": user_json(user), "csrf_token": csrf_token}


@router.post("/auth/logout")
def logout(principal: CurrentUser, response: Response, state: State) -> dict[str, Any]:
    """End the browser session (an API token stays valid: revoke it under /api/tokens)."""
    if principal.login is not None:
        state.store.delete_session(principal.login.token_hash)
    response.delete_cookie(SESSION_COOKIE)
    response.delete_cookie(CSRF_COOKIE)
    return {"signed_out": True}


@router.get("/auth/me")
def me(principal: CurrentUser) -> dict[str, Any]:
    return {**user_json(principal.user), "via": principal.via}


@router.post("/auth/password")
def change_password(body: PasswordBody, principal: CurrentUser, state: State) -> dict[str, Any]:
    """Change one's own password; every session of the user ends (sign in again)."""
    if not verify_password(state.hasher, principal.user.password_hash, body.current_password):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the current password is wrong")
    _set_password(state, principal.user.id, body.new_password)
    return {"changed": True}


def _set_password(state: State, user_id: int, password: str) -> None:
    try:
        set_password(state.store, state.hasher, user_id, password)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.get("/tokens")
def list_tokens(principal: CurrentUser, state: State) -> list[dict[str, Any]]:
    """The caller's API tokens (never the secrets)."""
    return [token_json(t) for t in state.store.tokens(principal.user.id)]


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenBody, principal: CurrentUser, state: State) -> dict[str, Any]:
    """A new API token; the secret is in this response only."""
    secret = new_token(API_TOKEN_PREFIX)
    expires = utcnow() + timedelta(days=body.expires_days) if body.expires_days else None
    token = state.store.add_token(
        principal.user.id, body.name, secret[:10], token_hash(secret), expires
    )
    return {**token_json(token), "token": secret}


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: int, principal: CurrentUser, state: State) -> dict[str, Any]:
    if not state.store.delete_token(principal.user.id, token_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"token {token_id} not found")
    return {"revoked": token_id}


@router.get("/users")
def list_users(_admin: AdminUser, state: State) -> list[dict[str, Any]]:
    return [user_json(u) for u in state.store.users()]


@router.post("/users", status_code=status.HTTP_201_CREATED)
def add_user(body: UserBody, _admin: AdminUser, state: State) -> dict[str, Any]:
    """Create a user; without a password one is generated and returned once."""
    try:
        user, generated = create_user(
            state.store, state.hasher, body.username, body.password, body.role
        )
    except ValueError as exc:
        code = 409 if "already exists" in str(exc) else 422
        raise HTTPException(code, str(exc)) from exc
    return {**user_json(user), "password": generated}


@router.patch("/users/{user_id}")
def update_user(user_id: int, body: UserUpdate, admin: AdminUser, state: State) -> dict[str, Any]:
    """Change a user's role, deactivate or reactivate them, or set their password."""
    if state.store.user(user_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    if user_id == admin.user.id and (body.active is False or body.role == "user"):
        raise HTTPException(status.HTTP_409_CONFLICT, "an admin cannot demote or disable itself")
    if body.password is not None:
        _set_password(state, user_id, body.password)
    fields = body.model_dump(exclude_none=True, exclude={"password"})
    user = state.store.update_user(user_id, **fields)
    return user_json(user)
