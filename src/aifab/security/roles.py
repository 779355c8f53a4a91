"""Roles and what each may do over the API.

Roles are ordered by power; each role has every permission of the roles before it and adds
its own::

    client     predict, read          (predict; list models and model info)
    annotator  + feedback, review     (correct predictions; work the review queue)
    operator   + reload, models       (reload served models; move aliases, promote)
    admin      + tokens               (create, list and revoke API tokens)

An unknown permission is a programming error (ValueError): a typo in a route must not
silently deny or allow. An unknown role is also a ValueError (roles come from the store,
which only keeps known ones); a user-typed role goes through :func:`parse_role` instead.

>>> allows("annotator", "predict"), allows("annotator", "reload")
(True, False)
>>> minimum_role("models")
'operator'
"""

from __future__ import annotations

from typing import cast

from aifab.core.errors import Forbidden, InputError, nearest
from aifab.core.types import Role

ROLES: tuple[Role, ...] = ("client", "annotator", "operator", "admin")
# What each role adds to the ones before it, in role order.
_ADDED: dict[Role, tuple[str, ...]] = {
    "client": ("predict", "read"),
    "annotator": ("feedback", "review"),
    "operator": ("reload", "models"),
    "admin": ("tokens",),
}
PERMISSIONS: tuple[str, ...] = tuple(p for role in ROLES for p in _ADDED[role])


def _rank(role: str) -> int:
    try:
        return ROLES.index(cast(Role, role))
    except ValueError:
        raise ValueError(f"unknown role {role!r}; roles are {list(ROLES)}") from None


def minimum_role(permission: str) -> Role:
    """The least powerful role that has ``permission``.

    >>> minimum_role("feedback")
    'annotator'
    """
    for role in ROLES:
        if permission in _ADDED[role]:
            return role
    raise ValueError(f"unknown permission {permission!r}; permissions are {list(PERMISSIONS)}")


def permissions(role: str) -> frozenset[str]:
    """Every permission ``role`` has.

    >>> sorted(permissions("annotator"))
    ['feedback', 'predict', 'read', 'review']
    """
    return frozenset(p for r in ROLES[: _rank(role) + 1] for p in _ADDED[r])


def allows(role: str, permission: str) -> bool:
    """Whether ``role`` has ``permission``.

    >>> allows("client", "tokens"), allows("admin", "tokens")
    (False, True)
    """
    return _rank(role) >= _rank(minimum_role(permission))


def require(role: str, permission: str) -> None:
    """Raise :class:`~aifab.core.errors.Forbidden` unless ``role`` has ``permission``.

    >>> require("operator", "reload")
    >>> require("client", "feedback")
    Traceback (most recent call last):
    ...
    aifab.core.errors.Forbidden: role 'client' may not feedback; needs annotator or above
    """
    if not allows(role, permission):
        needed = minimum_role(permission)
        raise Forbidden(
            f"role {role!r} may not {permission}; needs {needed} or above",
            details={"role": role, "permission": permission, "needs": needed},
        )


def parse_role(text: str) -> Role:
    """A role typed by a user (CLI, HTTP), or InputError naming the roles and the nearest one.

    >>> parse_role("operator")
    'operator'
    >>> parse_role("admn")
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: role 'admn': unknown; expected one of ['client', 'annotator', 'operator', 'admin'] (did you mean 'admin'?)
    """
    for role in ROLES:
        if text == role:
            return role
    hint = nearest(str(text), list(ROLES))
    raise InputError(
        f"role {text!r}: unknown; expected one of {list(ROLES)}"
        + (f" (did you mean {hint!r}?)" if hint else ""),
        details={"role": text, "roles": list(ROLES)},
    )
