"""Who may use the agent: the bearer token, where it comes from, and the check.

Every endpoint but ``/healthz`` requires ``Authorization: Bearer <token>``, unless the
agent was explicitly told ``TRACECAR_AGENT_AUTH=none``. The token comes, in order, from
``TRACECAR_AGENT_TOKEN`` (the webhook puts a per-pod one into the agent's env), from
``TRACECAR_AGENT_TOKEN_FILE``, or else is generated at start-up and written (mode 0600)
to ``TRACECAR_AGENT_GENERATED_TOKEN_FILE``: the agent never serves unauthenticated by
accident. See docs/security.md for why, and what it does not protect against.

The token's value is never logged nor put in any error message: messages name only
where the token can be found.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, Literal, NotRequired

from fastapi import Depends, Header, Request
from typing_extensions import TypedDict  # pydantic's schemas need it before Python 3.12

from agent.errors import Unauthorized

log = logging.getLogger("agent.auth")

MAX_HEADER_BYTES: Final = 4096
"""A longer Authorization header is refused without being compared."""
MIN_TOKEN_CHARS: Final = 16
MAX_TOKEN_CHARS: Final = 1024
TOKEN_ENV: Final = "TRACECAR_AGENT_TOKEN"  # noqa: S105  # the env var name, not a token

Source = Literal["env", "file", "generated", "none"]


class TokenConfigError(ValueError):
    """The configured token is unusable; the message never contains its value."""


class AccessFacts(TypedDict):
    """The ``auth`` section of ``GET /capabilities``: how the agent is reached (never
    the token)."""

    required: bool
    source: Source
    scheme: NotRequired[Literal["Bearer"]]
    token_file: NotRequired[str]
    """Where the token is, when it is in a file."""
    warning: NotRequired[str]
    """Authentication is off."""


@dataclass(frozen=True, kw_only=True)
class Access:
    """The agent's access rule, fixed at start-up."""

    source: Source
    token: bytes | None = None
    """The expected token (None only with ``source="none"``)."""
    path: Path | None = None
    """The token file (read or generated), for the messages that say where it is."""

    @property
    def required(self) -> bool:
        return self.token is not None

    def how(self) -> str:
        """How a client gets the token: the second half of every 401's message."""
        if self.source == "env":
            return (
                f"the token is the agent container's {TOKEN_ENV} env var: kubectl get pod POD "
                f"-o jsonpath='{{..env[?(@.name==\"{TOKEN_ENV}\")].value}}' (see docs/security.md)"
            )
        return (
            f"the token is in the file {self.path} of the agent's container "
            f"(kubectl exec POD -c tracecar-agent -- cat {self.path}; see docs/security.md)"
        )

    def describe(self) -> AccessFacts:
        """What ``/capabilities`` says about access (never the token)."""
        if not self.required:
            return {
                "required": False,
                "source": self.source,
                "warning": "authentication is off (TRACECAR_AGENT_AUTH=none): every "
                "container of this pod can use the agent and its capabilities",
            }
        out: AccessFacts = {"required": True, "scheme": "Bearer", "source": self.source}
        if self.path is not None:
            out["token_file"] = str(self.path)
        return out


def _checked(token: str, *, where: str) -> bytes:
    if not (MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS):
        raise TokenConfigError(
            f"{where}: the token must be {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters "
            f"long (it is {len(token)})"
        )
    if not all("\x21" <= ch <= "\x7e" for ch in token):
        raise TokenConfigError(
            f"{where}: the token must be printable ASCII without spaces (as a header allows)"
        )
    return token.encode("ascii")


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def write_token_file(path: Path, token: str) -> None:
    """Write `token` to `path`, mode 0600, atomically (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def load_access(
    *,
    auth: Literal["token", "none"],
    token: str | None,
    token_file: Path | None,
    generated_token_file: Path,
) -> Access:
    """The access rule from the settings; generates (and writes) a token when none is set."""
    if auth == "none":
        log.warning(
            "authentication is OFF (TRACECAR_AGENT_AUTH=none): every container of this pod "
            "can use the agent; see docs/security.md"
        )
        return Access(source="none")
    if token:
        return Access(source="env", token=_checked(token, where=TOKEN_ENV))
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenConfigError(
                f"TRACECAR_AGENT_TOKEN_FILE {token_file}: cannot read it ({type(e).__name__})"
            ) from None
        checked = _checked(text, where=f"TRACECAR_AGENT_TOKEN_FILE {token_file}")
        return Access(source="file", token=checked, path=token_file)
    generated = new_token()
    write_token_file(generated_token_file, generated)
    log.info(
        "no token configured: generated one (mode 0600; the value is never logged)",
        extra={"fields": {"path": str(generated_token_file)}},
    )
    return Access(source="generated", token=generated.encode("ascii"), path=generated_token_file)


def remove_generated(access: Access) -> None:
    """At shutdown: a generated token dies with the agent (nothing left behind)."""
    if access.source == "generated" and access.path is not None:
        with contextlib.suppress(FileNotFoundError):
            access.path.unlink()


def check(access: Access, authorization: str | None) -> None:
    """Raise :class:`Unauthorized` unless `authorization` carries the expected token."""
    if access.token is None:
        return
    reason = _refusal(access.token, authorization)
    if reason is not None:
        raise Unauthorized(
            f"{reason}: this agent requires 'Authorization: Bearer <token>'; {access.how()}",
        )


def _refusal(expected: bytes, authorization: str | None) -> str | None:
    """Why the header does not authorize (never quoting it), or None when it does."""
    if authorization is None or not authorization.strip():
        return "no Authorization header"
    if len(authorization) > MAX_HEADER_BYTES:
        return f"the Authorization header is too long (more than {MAX_HEADER_BYTES} bytes)"
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return "the Authorization header is not of the Bearer scheme"
    given = given.strip()
    if not given:
        return "the bearer token is empty"
    # Header values arrive latin-1 decoded; a token is ASCII, so anything else is wrong.
    if not given.isascii():
        return "the bearer token has non-ASCII characters (a token is ASCII)"
    # Constant time, on bytes (compare_digest raises TypeError on non-ASCII str).
    if not hmac.compare_digest(given.encode("ascii"), expected):
        return "the bearer token is wrong"
    return None


async def require_token(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    access: Access = request.app.state.access
    check(access, authorization)


TokenDep = Annotated[None, Depends(require_token)]
