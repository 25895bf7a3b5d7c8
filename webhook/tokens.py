"""The agent's per-pod bearer token: the one random input of an injection, behind a seam.

The webhook puts a fresh token into each injected agent's env (``TRACECAR_AGENT_TOKEN``):
whoever can ``get`` the pod (as ``kubectl port-forward`` users can) reads it from the
spec; the pod's app containers cannot (docs/security.md). Tests pass their own
:data:`TokenFactory` so patches are deterministic (the golden files).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

TokenFactory = Callable[[], str]
"""Returns a new token: printable ASCII, 16 to 1024 characters (what the agent accepts)."""


def random_token() -> str:
    """256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)
