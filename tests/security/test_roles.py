"""The role matrix, written out by hand: every role against every permission."""

from __future__ import annotations

import pytest

from aifab.core.errors import Forbidden, InputError
from aifab.security.roles import PERMISSIONS, ROLES, allows, minimum_role, parse_role, require

# The specification, independent of how roles.py builds it.
GRANTED = {
    "client": {"predict", "read"},
    "annotator": {"predict", "read", "feedback", "review"},
    "operator": {"predict", "read", "feedback", "review", "reload", "models"},
    "admin": {"predict", "read", "feedback", "review", "reload", "models", "tokens"},
}
ALL = ["predict", "read", "feedback", "review", "reload", "models", "tokens"]


def test_roles_are_ordered_by_power_and_permissions_are_complete() -> None:
    assert ROLES == ("client", "annotator", "operator", "admin")
    assert sorted(PERMISSIONS) == sorted(ALL)


@pytest.mark.parametrize("role", list(GRANTED))
@pytest.mark.parametrize("permission", ALL)
def test_role_matrix(role: str, permission: str) -> None:
    expected = permission in GRANTED[role]
    assert allows(role, permission) is expected
    if expected:
        require(role, permission)
    else:
        with pytest.raises(Forbidden) as info:
            require(role, permission)
        needed = minimum_role(permission)
        assert str(info.value) == f"role {role!r} may not {permission}; needs {needed} or above"
        assert info.value.http_status == 403
        assert needed not in {r for r, granted in GRANTED.items() if permission not in granted}


def test_the_brief_example_message() -> None:
    expected = r"^role 'client' may not feedback; needs annotator or above$"
    with pytest.raises(Forbidden, match=expected):
        require("client", "feedback")


@pytest.mark.parametrize("permission", ["delete", "", "Predict"])
def test_unknown_permission_is_a_programming_error(permission: str) -> None:
    with pytest.raises(ValueError, match="unknown permission"):
        allows("admin", permission)
    with pytest.raises(ValueError, match="unknown permission"):
        require("admin", permission)


def test_unknown_role_fails_closed() -> None:
    with pytest.raises(ValueError, match="unknown role 'root'"):
        allows("root", "predict")


def test_parse_role_names_the_roles_and_the_nearest() -> None:
    assert [parse_role(r) for r in ROLES] == list(ROLES)
    with pytest.raises(InputError, match=r"did you mean 'operator'\?") as info:
        parse_role("operater")
    assert "client" in str(info.value) and "admin" in str(info.value)
