"""Creating accounts: the first admin, users made by an admin or on the command line."""

from __future__ import annotations

import re

from argon2 import PasswordHasher

from cryostack.web.security import check_password_strength, generate_password
from cryostack.web.store import ADMIN, ROLES, ServerStore, User

USERNAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
DEFAULT_ADMIN = "admin"


def check_username(username: str) -> None:
    if not re.fullmatch(USERNAME_PATTERN, username):
        raise ValueError(
            f"user name {username!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )


def create_user(
    store: ServerStore,
    hasher: PasswordHasher,
    username: str,
    password: str | None = None,
    role: str = "user",
) -> tuple[User, str | None]:
    """Create a user; without ``password`` one is generated and returned (show it once)."""
    check_username(username)
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    generated = None
    if password is None:
        password = generated = generate_password()
    check_password_strength(password)
    user = store.add_user(username, hasher.hash(password), role)
    return user, generated


def ensure_admin(
    store: ServerStore,
    hasher: PasswordHasher,
    password: str | None = None,
    username: str = DEFAULT_ADMIN,
) -> tuple[User, str | None] | None:
    """On first start (no users yet) create an admin; return it and its generated password.

    Returns None when users exist already (``password`` is then ignored).
    """
    if store.count_users() > 0:
        return None
    return create_user(store, hasher, username, password, ADMIN)


def set_password(store: ServerStore, hasher: PasswordHasher, user_id: int, password: str) -> None:
    """Change a password; the user's login sessions end."""
    check_password_strength(password)
    store.update_user(user_id, password_hash=hasher.hash(password))
