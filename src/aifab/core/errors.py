"""The one exception tree of aifab.

Every error a user can see is one of these classes. Each class maps to exactly one
CLI exit code and one HTTP status, so the CLI and the server report the same failure
the same way::

    AifabError                      exit 1   HTTP 500   (never raised bare)
    ├── ConfigError                 exit 2   HTTP 400   spec / aifab.yaml / CLI arguments are wrong
    ├── InputError                  exit 3   HTTP 422   a user file, row, field or request is wrong
    │   ├── FormatError             exit 3   HTTP 422   a file is malformed (file, line and field named)
    │   └── LimitExceeded           exit 3   HTTP 413   an input is larger than a configured limit
    ├── NotFound                    exit 4   HTTP 404   a dataset, model, version, run or id does not exist
    ├── Conflict                    exit 5   HTTP 409   the thing exists already / a concurrent change won
    ├── GateFailed                  exit 6   HTTP 422   a data or quality gate refused (every reason listed)
    ├── AuthError                   exit 7   HTTP 401   no or unknown credentials
    │   └── Forbidden               exit 7   HTTP 403   known credentials, wrong role
    ├── Overloaded                  exit 8   HTTP 503   the server's queue is full; retry later
    ├── IntegrityError              exit 9   HTTP 500   stored bytes do not match their checksum
    ├── WorkspaceError              exit 10  HTTP 500   no workspace here / the workspace is broken
    └── DependencyMissing           exit 11  HTTP 500   an optional extra is needed and not installed

Messages name the thing that is wrong (file, line, field, key, id) and what would be
right, following one template: ``"<where>: <what is wrong>; <what is expected>"``.

>>> err = FormatError("data.csv", "ragged row", line=12, field="label")
>>> str(err)
"data.csv, line 12, field 'label': ragged row"
>>> (err.exit_code, err.http_status)
(3, 422)
"""

from __future__ import annotations

from typing import Any, ClassVar


class AifabError(Exception):
    """Base class; carries the exit code, the HTTP status and a machine-readable code."""

    exit_code: ClassVar[int] = 1
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The one error shape used on stdout (``--json``) and over HTTP."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class ConfigError(AifabError):
    exit_code = 2
    http_status = 400
    code = "invalid_config"


class InputError(AifabError):
    exit_code = 3
    http_status = 422
    code = "invalid_input"


class FormatError(InputError):
    """A file is malformed. Names the file and, when known, the line and field."""

    code = "malformed_file"

    def __init__(
        self,
        path: str,
        problem: str,
        *,
        line: int | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}", details=details)
        self.path, self.line, self.field = str(path), line, field


class LimitExceeded(InputError):
    http_status = 413
    code = "limit_exceeded"


class NotFound(AifabError):
    exit_code = 4
    http_status = 404
    code = "not_found"


class Conflict(AifabError):
    exit_code = 5
    http_status = 409
    code = "conflict"


class GateFailed(AifabError):
    """A data gate or quality gate refused; ``details`` holds every reason."""

    exit_code = 6
    http_status = 422
    code = "gate_failed"


class AuthError(AifabError):
    exit_code = 7
    http_status = 401
    code = "unauthorized"


class Forbidden(AuthError):
    http_status = 403
    code = "forbidden"


class Overloaded(AifabError):
    exit_code = 8
    http_status = 503
    code = "overloaded"


class RateLimited(Overloaded):
    """A token sent more requests than its rate limit allows: HTTP 429 with ``Retry-After``.

    An :class:`Overloaded` (CLI exit 8, "retry later") with its own status, so
    a client can tell "you are too fast" (429) from "the server is too busy" (503).
    """

    http_status = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after_s: int, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class IntegrityError(AifabError):
    exit_code = 9
    http_status = 500
    code = "integrity_error"


class WorkspaceError(AifabError):
    exit_code = 10
    http_status = 500
    code = "workspace_error"


class DependencyMissing(AifabError):
    exit_code = 11
    http_status = 500
    code = "dependency_missing"

    @classmethod
    def for_extra(cls, module: str, extra: str) -> DependencyMissing:
        """The friendly error for an optional import that failed.

        >>> str(DependencyMissing.for_extra("onnxruntime", "optimize"))
        "onnxruntime is not installed; install it with: pip install 'aifab[optimize]'"
        """
        return cls(f"{module} is not installed; install it with: pip install 'aifab[{extra}]'")


def check_choice(name: str, value: str, choices: list[str] | tuple[str, ...], *, where: str = "") -> str:
    """Validate ``value`` against ``choices`` and name the nearest valid one when it is wrong.

    >>> check_choice("format", "csv", ["csv", "jsonl"])
    'csv'
    >>> check_choice("format", "cvs", ["csv", "jsonl"])
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: The 'format' parameter must be one of ['csv', 'jsonl']; got 'cvs' (did you mean 'csv'?)
    """
    if value in choices:
        return value
    hint = nearest(value, list(choices))
    suffix = f" (did you mean {hint!r}?)" if hint else ""
    prefix = f"{where}: " if where else ""
    raise ConfigError(f"{prefix}The {name!r} parameter must be one of {list(choices)}; got {value!r}{suffix}")


def nearest(word: str, candidates: list[str]) -> str | None:
    """The closest candidate by edit similarity, or None when nothing is close.

    >>> nearest("lable", ["label", "text"])
    'label'
    """
    import difflib

    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return matches[0] if matches else None
