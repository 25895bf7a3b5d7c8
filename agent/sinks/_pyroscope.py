"""Grafana Pyroscope's push API: one spooled pprof -> ``push.v1.PusherService/Push``.

Owned here: the request (Connect's unary protocol with a protobuf body, encoded by
hand: ``PushRequest{series: [{labels, samples: [{raw_profile, ID}]}]}``, field
numbers from Pyroscope's api/push/v1/push.proto and types/v1/types.proto), the
credentials (tenant header; basic auth or bearer, read from their files at every
send so a rotated Secret is picked up), and turning Pyroscope's answers into
:class:`agent.sinks._sink.SendError` kinds.

The push API, not ``/ingest``: labels travel as a list of pairs, so no value
needs quoting or escaping, and ``__name__`` names the profile type's first part
(``process_cpu``), as Pyroscope's own agents send it. The pprof's sample types
make the rest: ``process_cpu:cpu:nanoseconds:cpu:nanoseconds``.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx

from agent.sinks._sink import SendError
from agent.sinks._spool import Item
from tracecar_formats.pprof import length_delimited

PUSH_PATH = "/push.v1.PusherService/Push"


def push_request(profile: bytes, labels: dict[str, str], sample_id: str) -> bytes:
    """A ``push.v1.PushRequest`` with one series holding one raw pprof sample."""
    pairs = b"".join(
        length_delimited(1, length_delimited(1, k.encode()) + length_delimited(2, v.encode()))
        for k, v in sorted(labels.items())
    )
    sample = length_delimited(1, profile) + length_delimited(2, sample_id.encode())
    return length_delimited(1, pairs + length_delimited(2, sample))


def _read_secret(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as e:
        raise SendError(f"cannot read the {what} file {path}: {e.strerror}", kind="config") from e


class PyroscopeSender:
    name = "pyroscope"

    def __init__(
        self,
        url: str,
        *,
        tenant: str | None,
        user_file: Path | None,
        password_file: Path | None,
        token_file: Path | None,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.tenant = tenant
        self.user_file = user_file
        self.password_file = password_file
        self.token_file = token_file
        self._client = httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, transport=transport
        )

    def describe(self) -> dict[str, object]:
        auth = "bearer" if self.token_file else "basic" if self.user_file else "none"
        return {"url": self.url, "tenant": self.tenant, "auth": auth}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/proto", "Connect-Protocol-Version": "1"}
        if self.tenant:
            headers["X-Scope-OrgID"] = self.tenant
        token = _read_secret(self.token_file, "Pyroscope token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _auth(self) -> httpx.BasicAuth | None:
        user = _read_secret(self.user_file, "Pyroscope user")
        if user is None:
            return None
        password = _read_secret(self.password_file, "Pyroscope password") or ""
        return httpx.BasicAuth(user, password)

    async def send(self, item: Item) -> None:
        labels = dict(item.meta["labels"])
        try:
            profile = await asyncio.to_thread(item.data.read_bytes)
        except OSError as e:
            raise SendError(f"the spooled profile is unreadable: {e}", kind="rejected") from e
        body = push_request(profile, labels, str(uuid.uuid4()))
        auth = self._auth()
        request = self._client.build_request(
            "POST", self.url + PUSH_PATH, content=body, headers=self._headers()
        )
        try:
            r = (
                await self._client.send(request, auth=auth)
                if auth
                else await self._client.send(request)
            )
        except httpx.TimeoutException as e:
            raise SendError(
                f"Pyroscope at {self.url} did not answer in time", kind="transient"
            ) from e
        except httpx.HTTPError as e:
            raise SendError(f"cannot reach Pyroscope at {self.url}: {e}", kind="transient") from e
        if r.status_code == 200:
            return
        raise _classify(r, self.url)

    async def close(self) -> None:
        await self._client.aclose()


def _message(r: httpx.Response) -> str:
    try:
        doc = r.json()
        text = str(doc.get("message") or doc.get("code") or r.text)
    except ValueError:
        text = r.text
    return " ".join(text.split())[:300] or r.reason_phrase


def _classify(r: httpx.Response, url: str) -> SendError:
    says = _message(r)
    status = r.status_code
    if status in (401, 403):
        what = "rejected the credentials" if status == 401 else "refused access"
        return SendError(
            f"Pyroscope at {url} {what} (HTTP {status}: {says}): check "
            "TRACECAR_AGENT_PYROSCOPE_TENANT and the user/password or token files",
            kind="config",
        )
    if status == 404:
        return SendError(
            f"Pyroscope at {url} has no push API at {PUSH_PATH} (HTTP 404): is "
            "TRACECAR_AGENT_PYROSCOPE_URL Pyroscope's base URL?",
            kind="config",
        )
    if status in (408, 429) or status >= 500:
        return SendError(f"Pyroscope at {url} answered HTTP {status}: {says}", kind="transient")
    return SendError(f"Pyroscope rejected a profile (HTTP {status}): {says}", kind="rejected")
