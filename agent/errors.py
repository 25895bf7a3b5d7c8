"""The agent's own exceptions, and how they reach the client.

Library and tool errors are translated into these at the boundary of the module
that meets them; handlers never see a raw ``OSError`` or ``CalledProcessError``.
Every one becomes a JSON body ``{"detail": "..."}`` (plus optional fields)::

    AgentError                    500  (never raised directly)
     ├── BadRequest               400  malformed request the schema could not catch
     ├── Unauthorized             401  missing or wrong bearer token
     ├── Forbidden                403  disabled on this agent by its operator
     ├── NotFound                 404  unknown pid, job, probe, session, symbol
     ├── Conflict                 409  action in the wrong state; unavailable domain
     ├── Invalid                  422  a value out of range or not matching its pattern
     ├── TooMany                  429  a configured limit is reached
     └── Unavailable              503  a tool is missing or not permitted here
"""

from __future__ import annotations

from typing import Any, ClassVar


class AgentError(Exception):
    status_code: ClassVar[int] = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


class BadRequest(AgentError):
    status_code = 400


class Unauthorized(AgentError):
    status_code = 401


class Forbidden(AgentError):
    status_code = 403


class NotFound(AgentError):
    status_code = 404


class Conflict(AgentError):
    status_code = 409


class Invalid(AgentError):
    status_code = 422

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        if field is not None:
            extra["field"] = field
        super().__init__(detail, **extra)


class TooMany(AgentError):
    status_code = 429


class Unavailable(AgentError):
    status_code = 503
