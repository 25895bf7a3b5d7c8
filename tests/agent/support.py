"""Helpers the agent's integration tests share: processes in a simulated pod, waiting
for a profile, reading folded stacks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests import podsim


def until_recorded(client: httpx.Client, timeout: float = 90) -> dict[str, Any]:
    """``GET /recorder`` once the flight recorder's ring holds a second: its window
    starts at bpftrace's first second, and a busy machine took seconds to start bpftrace
    (it parses BTF and loads the kernel's symbols first)."""
    deadline = time.monotonic() + timeout
    while True:
        s: dict[str, Any] = client.get("/recorder").json()
        if s["window"] is not None or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def until_complete(client: httpx.Client, until: float, timeout: float) -> dict[str, Any]:
    """``GET /recorder`` once every second before ``until`` is final (``complete_until``);
    fails with the status after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        s: dict[str, Any] = client.get("/recorder").json()
        if (s.get("complete_until") or 0) >= until:
            return s
        assert time.monotonic() < deadline, s
        time.sleep(0.25)


def pod_processes(pod: podsim.SimPod, name: str) -> list[int]:
    """Host pids of processes called ``name`` inside this pod's PID namespace only
    (other suites on the machine may run their own perf)."""
    ns = os.readlink(f"/proc/{pod.infra_pid}/ns/pid")
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == name and os.readlink(d / "ns/pid") == ns:
                found.append(int(d.name))
        except OSError:
            continue
    return found


def wait_done(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/profiles/{job_id}")
        assert r.status_code == 200, r.text
        body: dict[str, object] = r.json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def folded_total(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        out[stack] = out.get(stack, 0) + int(n)
    return out


def check_pprof(data: bytes, name: str) -> None:
    import gzip

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    raw = gzip.decompress(data)
    # profile.proto's messages, declared here so the test uses protobuf's own parser.
    fdp = descriptor_pb2.FileDescriptorProto(name="t_profile.proto", package="tp")
    prof = fdp.message_type.add(name="Profile")
    fields = [
        ("sample_type", 1, "ValueType", True), ("sample", 2, "Sample", True),
        ("location", 4, "Location", True), ("function", 5, "Function", True),
        ("string_table", 6, None, True),
    ]  # fmt: skip
    T = descriptor_pb2.FieldDescriptorProto
    for fname, num, typ, rep in fields:
        f = prof.field.add(name=fname, number=num)
        f.label = T.LABEL_REPEATED if rep else T.LABEL_OPTIONAL
        if typ is None:
            f.type = T.TYPE_STRING
        else:
            f.type, f.type_name = T.TYPE_MESSAGE, f".tp.{typ}"
    vt = fdp.message_type.add(name="ValueType")
    for fname, num in (("type", 1), ("unit", 2)):
        vt.field.add(name=fname, number=num, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    s = fdp.message_type.add(name="Sample")
    s.field.add(name="location_id", number=1, type=T.TYPE_UINT64, label=T.LABEL_REPEATED)
    s.field.add(name="value", number=2, type=T.TYPE_INT64, label=T.LABEL_REPEATED)
    loc = fdp.message_type.add(name="Location")
    loc.field.add(name="id", number=1, type=T.TYPE_UINT64, label=T.LABEL_OPTIONAL)
    line = fdp.message_type.add(name="Line")
    line.field.add(name="function_id", number=1, type=T.TYPE_UINT64, label=T.LABEL_OPTIONAL)
    loc.field.add(
        name="line", number=4, type=T.TYPE_MESSAGE, type_name=".tp.Line", label=T.LABEL_REPEATED
    )
    fn = fdp.message_type.add(name="Function")
    fn.field.add(name="id", number=1, type=T.TYPE_UINT64, label=T.LABEL_OPTIONAL)
    fn.field.add(name="name", number=2, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("tp.Profile"))
    msg = cls.FromString(raw)
    assert len(msg.sample) > 0
    names = {msg.string_table[f.name] for f in msg.function}
    assert any(name in n for n in names), sorted(names)[:20]


def wait_processes(
    client: httpx.Client, container: str, *, runtimes: dict[str, int], timeout: float = 60
) -> list[dict[str, Any]]:
    """The container's processes once it runs at least ``runtimes[r]`` processes of each
    runtime ``r``: an app that forks workers (or a shell that starts two programs) takes
    its time on a busy machine, and a profile taken earlier would miss them."""
    deadline = time.monotonic() + timeout
    while True:
        procs = [p for p in client.get("/processes").json() if p["container"] == container]
        have = {r: sum(1 for p in procs if p["runtime"] == r) for r in runtimes}
        if all(have[r] >= n for r, n in runtimes.items()):
            return procs
        assert time.monotonic() < deadline, (container, runtimes, procs)
        time.sleep(0.2)


AGENT_READY_S = 180.0


def profile(client: httpx.Client, body: dict[str, object]) -> tuple[dict[str, int], dict]:  # type: ignore[type-arg]
    r = client.post("/profiles", params={"wait": "true", "format": "folded"}, json=body)
    assert r.status_code == 200, r.text
    job_id = r.headers["location"].rsplit("/", 1)[1]
    meta = client.get(f"/profiles/{job_id}").json()
    return folded_total(r.text), meta


def profile_until(
    client: httpx.Client, body: dict[str, object], enough: Callable[[dict[str, int]], bool]
) -> tuple[dict[str, int], dict]:  # type: ignore[type-arg]
    """Profiles of the same target, added up until ``enough`` holds (at most 8): a loaded
    machine gives the app a fraction of a core, so no sample count is assumed."""
    total: dict[str, int] = {}
    for _ in range(8):
        stacks, meta = profile(client, body)
        for k, v in stacks.items():
            total[k] = total.get(k, 0) + v
        if enough(total):
            break
    return total, meta


def share(stacks: dict[str, int], pattern: str, within: str) -> tuple[int, int]:
    """Samples whose stack contains ``pattern``, of those containing ``within``."""
    total = sum(n for s, n in stacks.items() if within in s.split(";"))
    hit = sum(n for s, n in stacks.items() if pattern in s)
    return hit, total


def symbols_of(meta: dict, name: str) -> list[dict]:  # type: ignore[type-arg]
    return [e for e in meta["metadata"]["symbols"] if os.path.basename(e["object"]) == name]


def half_written(data_dir: Path) -> list[Path]:
    """The agent's half-written job artifacts (``*.part``). Not the capabilities' own
    state beside their jobs (``lttng/_home``, ``profile/_native``): a native sink or
    sampler may still be building there, in the background, while the agent runs."""
    return [
        p
        for p in data_dir.rglob("*.part")
        if not any(part.startswith("_") for part in p.relative_to(data_dir).parts[:-1])
    ]
