"""Passwords (argon2), random tokens stored as hashes, CSRF checks, login rate limiting, and
confinement of client-given paths to a folder."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cryostack.web.store import ServerStore, utcnow

TOKEN_BYTES = 32
API_TOKEN_PREFIX = "cst_"
MIN_PASSWORD_LENGTH = 8


class PathEscapeError(ValueError):
    """A client-given path points outside the folder it must stay in."""


def password_hasher(time_cost: int = 3, memory_kib: int = 65536) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def verify_password(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def generate_password() -> str:
    """A random password of 20 URL-safe characters (about 120 bits)."""
    return secrets.token_urlsafe(15)


def new_token(prefix: str = "") -> str:
    """A random bearer secret (256 bits)."""
    return prefix + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """SHA-256 of a token: tokens are random, so a fast hash is enough to store them."""
    return hashlib.sha256(token.encode()).hexdigest()


def same_secret(token: str | None, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    if not token:
        return False
    return hmac.compare_digest(token_hash(token), stored_hash)


@dataclass(frozen=True)
class RateLimit:
    """Failed-login limit per user name and client address."""

    max_failures: int
    window_s: int

    def retry_after_s(self, store: ServerStore, username: str, ip: str) -> int:
        """0 when a login may be tried now, else the seconds until the next try is allowed."""
        failures, oldest = store.recent_failures(username, ip, self.window_s)
        if failures < self.max_failures or oldest is None:
            return 0
        waited = (utcnow() - oldest).total_seconds()
        return max(1, math.ceil(self.window_s - waited))


def resolve_inside(root: Path, relative: str) -> Path:
    """The real path of ``relative`` under ``root``; raise :class:`PathEscapeError` when it
    is absolute, holds a NUL, or leads (through ``..`` or symbolic links) outside ``root``."""
    if "\x00" in relative:
        raise PathEscapeError("path contains a NUL character")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        raise PathEscapeError(f"path {relative!r} is absolute; give a path inside the project")
    base = root.resolve()
    target = (base / pure).resolve()
    if target != base and not target.is_relative_to(base):
        raise PathEscapeError(f"path {relative!r} leads outside the project folder")
    return target
