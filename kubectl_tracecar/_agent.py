"""The agent's HTTP API as the plugin uses it, over a port-forward.

httpx errors and the agent's JSON error bodies are translated here into the plugin's
own errors: the agent's ``detail`` is passed on word for word (it already says what
was wrong and what is allowed), with the HTTP status deciding the exit code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from kubectl_tracecar.errors import AgentFailed, Forbidden, NotFound, PluginError, Unsupported

# Profiles can be long; a stream of probe events may be silent for a while (the agent
# sends a heartbeat every few seconds, so a read timeout still catches a dead link).
TIMEOUT = httpx.Timeout(30.0, read=120.0)


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else json.dumps(detail)


def check(resp: httpx.Response, what: str) -> httpx.Response:
    if resp.status_code < 400:
        return resp
    detail = _detail(resp)
    if resp.status_code in (401, 403):
        raise Forbidden(f"{what}: the agent refused: {detail}")
    if resp.status_code == 404:
        raise NotFound(f"{what}: {detail}")
    if resp.status_code == 409:
        raise Unsupported(f"{what}: {detail}")
    raise AgentFailed(f"{what}: {detail}", status=resp.status_code)


class AgentClient:
    def __init__(self, base_url: str, *, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _req(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise PluginError(f"{what}: the agent did not answer: {e}") from e
        return check(resp, what)

    def get_json(self, path: str, what: str, **kw: Any) -> Any:
        return self._req("GET", path, what, **kw).json()

    def post_json(self, path: str, body: dict[str, Any], what: str, **kw: Any) -> Any:
        return self._req("POST", path, what, json=body, **kw).json()

    def delete(self, path: str, what: str) -> Any:
        resp = self._req("DELETE", path, what)
        return resp.json() if resp.content else None  # 204: no body

    def download(self, path: str, what: str, **kw: Any) -> bytes:
        return self._req("GET", path, what, **kw).content

    def download_with_headers(
        self, path: str, what: str, **kw: Any
    ) -> tuple[bytes, dict[str, str]]:
        """The body and the response's headers (names in lower case)."""
        resp = self._req("GET", path, what, **kw)
        return resp.content, {k.lower(): v for k, v in resp.headers.items()}

    def stream_ndjson(self, path: str, what: str) -> Iterator[dict[str, Any]]:
        """Records of an NDJSON stream, as they arrive."""
        try:
            with self._http.stream("GET", path, headers={"Accept": "application/x-ndjson"}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    check(resp, what)
                for line in resp.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.HTTPError as e:
            raise PluginError(f"{what}: the stream from the agent broke: {e}") from e
