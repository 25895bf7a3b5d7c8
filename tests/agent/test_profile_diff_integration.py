"""Differential flame graphs through the agent: two real perf recordings of a workload
whose hot function changes between them (SIGUSR1), compared with GET /profiles/diff."""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET

import httpx
import pytest

from tests import podsim
from tests.agent.support import folded_total, wait_done
from tests.agent.workloads import SHIFT_C, compile_c
from tests.conftest import need

pytestmark = pytest.mark.integration
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def shift(pod: podsim.SimPod, tmp_path_factory: pytest.TempPathFactory) -> podsim.Container:
    need("perf", "gcc")
    binary = compile_c(SHIFT_C, tmp_path_factory.mktemp("shift") / "shift")
    return pod.run("shiftapp", ["/srv/shift"], files={"shift": binary})


ENOUGH_SAMPLES = 300
"""Per profile: the minor function's tenth is then ~30 samples, a frame the diff graph
draws. A loaded machine gives the app a fraction of a core: with one 2 s profile each, at
a load average of 20, the target's alpha_function was missing from the graph."""


def record(client: httpx.Client, pid: int) -> str:
    """A profile of at least ENOUGH_SAMPLES samples: 2 s, doubled until it has them (up to
    32 s)."""
    duration = 2
    while True:
        r = client.post("/profiles", json={"pid": pid, "duration_s": duration})
        assert r.status_code == 202, r.text
        done = wait_done(client, r.json()["id"], timeout=duration + 120)
        assert done["state"] == "succeeded", done
        samples = sum(folded_total(client.get(f"/profiles/{done['id']}/folded").text).values())
        if samples >= ENOUGH_SAMPLES or duration >= 32:
            return str(done["id"])
        duration *= 2


def share(stacks: dict[str, int], name: str) -> float:
    return sum(n for s, n in stacks.items() if name in s) / max(sum(stacks.values()), 1)


def test_diff_shows_the_shift_with_the_right_sign(
    client: httpx.Client, shift: podsim.Container
) -> None:
    base = record(client, shift.pid)  # alpha 9 : beta 1
    os.kill(shift.host_pid, signal.SIGUSR1)
    time.sleep(0.3)
    target = record(client, shift.pid)  # alpha 1 : beta 9
    os.kill(shift.host_pid, signal.SIGUSR1)

    r = client.get("/profiles/diff", params={"base": base, "target": target, "format": "folded"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    base_n: dict[str, int] = {}
    target_n: dict[str, int] = {}
    for line in r.text.splitlines():
        stack, b, t = line.rsplit(" ", 2)
        base_n[stack], target_n[stack] = int(b), int(t)
    # Normalised (the default): the base's counts are scaled to the target's total.
    assert abs(sum(base_n.values()) - sum(target_n.values())) <= len(base_n)
    assert share(base_n, "alpha_function") > 0.7 and share(target_n, "alpha_function") < 0.3
    alpha = sum(target_n[s] - base_n[s] for s in base_n if "alpha_function" in s)
    beta = sum(target_n[s] - base_n[s] for s in base_n if "beta_function" in s)
    assert alpha < 0 < beta, (alpha, beta)
    # Raw counts: the base column is the base profile's own folded counts.
    raw = client.get(
        "/profiles/diff",
        params={"base": base, "target": target, "format": "folded", "normalize": "false"},
    ).text
    own = folded_total(client.get(f"/profiles/{base}/folded").text)
    assert sum(int(x.rsplit(" ", 2)[1]) for x in raw.splitlines()) == sum(own.values())

    svg = client.get("/profiles/diff", params={"base": base, "target": target})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    # Each name's widest frame: a busy machine's profile also has a few odd stacks (a
    # broken unwind) with a frame of the same name that did not change (white).
    fills: dict[str, tuple[float, str]] = {}
    for g in ET.fromstring(svg.content).iter(f"{SVG_NS}g"):
        title, rect = g.find(f"{SVG_NS}title"), g.find(f"{SVG_NS}rect")
        if title is not None and rect is not None and title.text:
            name, width = title.text.split(" (")[0], float(rect.get("width", "0"))
            if width > fills.get(name, (-1.0, ""))[0]:
                fills[name] = (width, rect.get("fill", ""))
    red, blue = fills["beta_function"][1], fills["alpha_function"][1]
    r_, g_, b_ = (int(x) for x in red[4:-1].split(","))
    assert r_ == 255 and g_ < 200, red  # grew: red
    r_, g_, b_ = (int(x) for x in blue[4:-1].split(","))
    assert b_ == 255 and r_ < 200, blue  # shrank: blue
    # The graph drawn with the base's widths keeps the meaning of the hues.
    by_base = client.get(
        "/profiles/diff", params={"base": base, "target": target, "widths": "base"}
    )
    assert by_base.status_code == 200 and b"widths: the base" in by_base.content


def test_diff_bad_input(client: httpx.Client, shift: podsim.Container) -> None:
    some = record(client, shift.pid)
    r = client.get("/profiles/diff", params={"base": some, "target": "0123456789ab"})
    assert r.status_code == 404 and "0123456789ab" in r.json()["detail"]
    r = client.get("/profiles/diff", params={"base": "nope", "target": some})
    assert r.status_code == 422 and "base" in r.json()["detail"]
    r = client.get("/profiles/diff", params={"target": some})
    assert r.status_code == 422 and "base" in r.json()["detail"]
    r = client.get("/profiles/diff", params={"base": some, "target": some, "format": "pdf"})
    assert r.status_code == 422 and "folded" in r.json()["detail"]
    running = client.post("/profiles", json={"pid": shift.pid, "duration_s": 5}).json()["id"]
    try:
        r = client.get("/profiles/diff", params={"base": some, "target": running})
        assert r.status_code == 409 and "succeeded" in r.json()["detail"], r.text
    finally:
        client.delete(f"/profiles/{running}", params={"discard": "true"})
