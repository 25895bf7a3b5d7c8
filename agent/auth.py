"""Optional bearer-token authentication: every endpoint but ``/healthz``."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header

from agent.deps import SettingsDep
from agent.errors import Unauthorized


async def require_token(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    expected = settings.resolved_token()
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    # Compared as bytes: compare_digest raises TypeError on non-ASCII str (a header may hold any).
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise Unauthorized(
            "this agent requires a bearer token: send 'Authorization: Bearer <token>'",
        )


TokenDep = Annotated[None, Depends(require_token)]
