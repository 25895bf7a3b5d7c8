"""Names for stripped binaries and the callers of frameless leaves, through the agent in
the simulated pod, with the real perf, gcc, objcopy, Go and elfutils' debuginfod.

* A Go program built twice, with and without ``-ldflags=-s -w``: both profiles name the
  same functions (from .gopclntab) in the same proportions, an inlined function as a
  frame of its own, and the caller a frameless leaf hides is put back.
* The issue's leaf program (``main`` calls the leaf ``checksum`` directly three times as
  often as through ``verify``), in Go and in C (-O2 -fno-omit-frame-pointer, where gcc
  still builds leaves without a frame): ``verify;checksum`` holds about a quarter.
* A stripped C program with its debug file at the build-id path inside its container,
  by .gnu_debuglink, from a real debuginfod server (cached), and with none of them.
* A C program (-O2 -g) whose static function is inlined into its hot caller: the
  inlined function is a frame of its own (from DWARF), unstripped and stripped with its
  debug file at the build-id path.
* The cluster build's own etcd (a real third-party server, shipped stripped with
  ``-s -w``) under a write load from wrk: its flame graph names go.etcd.io/... functions.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import podsim
from tests.agent.support import (
    AGENT_READY_S,
    pod_processes,
    profile,
    profile_until,
    share,
    symbols_of,
)
from tests.agent.workloads import LEAF_C, LEAF_GO, build_go, build_go_stripped, compile_c
from tests.conftest import need

pytestmark = pytest.mark.integration


# scramble_bits (static, always inlined) holds most of hot_loop's time: perf alone folds
# it into hot_loop; from DWARF it is a frame of its own under hot_loop.
INLINE_C = r"""
#include <stdint.h>
volatile uint64_t sink;
static inline __attribute__((always_inline)) uint64_t scramble_bits(uint64_t n) {
    uint64_t s = 0;
    for (uint64_t i = 0; i < n; i++) s += (i * i) ^ (s >> 3);
    return s;
}
__attribute__((noinline)) uint64_t hot_loop(uint64_t n) {
    uint64_t t = 0;
    for (uint64_t i = 0; i < n / 8; i++) t ^= i * 2654435761u;
    return scramble_bits(n) + t;
}
int main(void) {
    volatile uint64_t n = 3000000;
    for (;;) sink += hot_loop(n);
}
"""


# The leaf programs' shares are checked within bands: at 30 samples, verify;checksum's
# quarter falls below the band's 0.1 about once in 30 runs, at 200 about never (binomial
# sd 0.03). One 3 s profile gives 600 samples on an idle core; one gave 32 on a machine
# running three suites, so the tests profile until they have these many.
LEAF_SAMPLES = 200

# A loaded machine (2 cores, a cluster build alongside) can take over 30 s to import
# and start the agent: these tests wait longer for it than the default.


@pytest.fixture(scope="module")
def agent(pod: podsim.SimPod) -> podsim.AgentHandle:
    return podsim.start_agent(pod, ready_timeout=AGENT_READY_S)


@pytest.fixture(autouse=True)
def nothing_left_behind(pod: podsim.SimPod) -> Iterator[None]:
    yield
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and pod_processes(pod, "perf"):
        time.sleep(0.1)
    assert pod_processes(pod, "perf") == [], "a perf process was left running"


@pytest.fixture(scope="module")
def go_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need("go")
    d = tmp_path_factory.mktemp("gobuild")
    full = build_go(LEAF_GO, d / "full")
    stripped = build_go_stripped(LEAF_GO, d / "stripped")
    return full, stripped


def test_stripped_go_names_like_unstripped(
    pod: podsim.SimPod, client: httpx.Client, go_builds: tuple[Path, Path]
) -> None:
    results = {}
    for name, exe in zip(("full", "stripped"), go_builds, strict=True):
        app = pod.run(f"go-{name}", [f"/srv/{name}"], files={name: exe})
        try:
            time.sleep(0.5)
            stacks, meta = profile_until(
                client,
                {"pid": app.pid, "duration_s": 3, "frequency_hz": 199},
                lambda st: share(st, "main.checksum", "main.checksum")[1] >= LEAF_SAMPLES,
            )
        finally:
            app.stop()
        (entry,) = symbols_of(meta, name)
        assert entry["source"] == "pclntab", entry
        assert "inlined calls" in entry["detail"], entry
        assert not any(f"[{name}]" in s for s in stacks), "unnamed frames in the Go binary"
        results[name] = stacks
    for name, stacks in results.items():
        total = sum(stacks.values())
        funcs = {f for s in stacks for f in s.split(";")}
        assert {"main.checksum", "main.verify", "main.hot", "main.mix"} <= funcs, (name, funcs)
        # The inlined mix shows under hot, in both builds.
        assert any("main.hot;main.mix" in s for s in stacks), name
        # checksum runs 4 times for each hot: about 80% of the busy samples (noise aside).
        checksum, _ = share(stacks, "main.checksum", "main.checksum")
        assert 0.55 <= checksum / total <= 0.95, (name, checksum, total)
        # The frameless checksum's caller is back: verify;checksum about 1/4 of checksum.
        via, of = share(stacks, "main.verify;main.checksum", "main.checksum")
        assert 0.1 <= via / of <= 0.45, (name, via, of)
    f_share = share(results["full"], "main.checksum", "main.checksum")[0] / sum(
        results["full"].values()
    )
    s_share = share(results["stripped"], "main.checksum", "main.checksum")[0] / sum(
        results["stripped"].values()
    )
    assert abs(f_share - s_share) < 0.15, (f_share, s_share)


def test_c_frameless_leaf_caller(pod: podsim.SimPod, client: httpx.Client, tmp_path: Path) -> None:
    exe = compile_c(LEAF_C, tmp_path / "leaf")
    app = pod.run("cleaf", ["/srv/leaf"], files={"leaf": exe})
    try:
        time.sleep(0.5)
        stacks, meta = profile_until(
            client,
            {"pid": app.pid, "duration_s": 3, "frequency_hz": 199},
            lambda st: share(st, "checksum", "checksum")[1] >= LEAF_SAMPLES,
        )
    finally:
        app.stop()
    via, of = share(stacks, "verify;checksum", "checksum")
    assert of >= LEAF_SAMPLES, stacks
    assert 0.1 <= via / of <= 0.45, (via, of, stacks)
    assert meta["metadata"]["leaf_callers_recovered"] > 0


def _stripped_c(tmp_path: Path, *, debuglink: bool = False) -> tuple[Path, Path, str]:
    """A stripped leaf program, its debug file and its build-id."""
    need("objcopy")
    exe = compile_c(LEAF_C.replace("checksum", "crunch_numbers"), tmp_path / "prog")
    debug = tmp_path / "prog.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(debug)], check=True)
    subprocess.run(["objcopy", "--strip-all", str(exe)], check=True)
    if debuglink:
        subprocess.run(
            ["objcopy", f"--add-gnu-debuglink={debug}", str(exe)], check=True, cwd=tmp_path
        )
    out = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True, check=True)
    build_id = out.stdout.split("Build ID:")[1].split()[0]
    return exe, debug, build_id


def _private_debug_dir(files: dict[str, str]) -> list[str]:
    """The container's own /usr/lib/debug (a tmpfs over the host's) filled from /srv."""
    cmds = ["mount -t tmpfs dbg /usr/lib/debug"]
    for src, dest in files.items():
        cmds.append(f"mkdir -p {os.path.dirname(dest)} && cp /srv/{src} {dest}")
    return ["sh", "-c", " && ".join(cmds) + " && exec /srv/prog"]


def test_debug_file_at_build_id_path_in_container(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    exe, debug, build_id = _stripped_c(tmp_path)
    dest = f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    app = pod.run(
        "cdebug",
        _private_debug_dir({"prog.debug": dest}),
        files={"prog": exe, "prog.debug": debug},
    )
    try:
        time.sleep(0.5)
        assert not Path(dest).exists(), "the debug file must exist in the container only"
        stacks, meta = profile(client, {"pid": app.pid, "duration_s": 2})
    finally:
        app.stop()
    assert any(s.endswith(";crunch_numbers") for s in stacks), stacks
    (entry,) = symbols_of(meta, "prog")
    assert entry["source"] == "build-id path" and entry["detail"] == dest, entry


def test_debuglink_and_mismatched_build_id(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    exe, debug, build_id = _stripped_c(tmp_path, debuglink=True)
    # A debug file of another build at the build-id path: ignored, and said.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_debug, _ = _stripped_c(other_dir)
    dest = f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    app = pod.run(
        "clink",
        _private_debug_dir({"other.debug": dest}),
        files={"prog": exe, "prog.debug": debug, "other.debug": other_debug},
    )
    try:
        time.sleep(0.5)
        stacks, meta = profile(client, {"pid": app.pid, "duration_s": 2})
    finally:
        app.stop()
    assert any(s.endswith(";crunch_numbers") for s in stacks), stacks
    (entry,) = symbols_of(meta, "prog")
    assert entry["source"] == "debuglink" and entry["detail"] == "/srv/prog.debug", entry
    assert any("ignored" in i for i in entry["ignored"]), entry


def test_stripped_without_debug_file_says_so(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    exe, _debug, _ = _stripped_c(tmp_path)
    app = pod.run("cbare", ["/srv/prog"], files={"prog": exe})
    try:
        time.sleep(0.5)
        stacks, meta = profile(client, {"pid": app.pid, "duration_s": 1})
    finally:
        app.stop()
    assert not any("crunch_numbers" in s for s in stacks)
    (entry,) = symbols_of(meta, "prog")
    assert entry["source"] in ("none", "dynsym"), entry
    assert "TRACECAR_AGENT_DEBUGINFOD_URLS" in entry["detail"], entry
    assert any("symbols of prog" in n for n in meta["metadata"]["notes"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def debuginfod_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """elfutils' debuginfod serving a directory (``-F``: ELF/DWARF files in it)."""
    need("debuginfod")
    serve = tmp_path / "served"
    serve.mkdir()
    port = _free_port()
    db = tmp_path / "debuginfod.sqlite"
    proc = subprocess.Popen(
        ["debuginfod", "-F", "-p", str(port), "-d", str(db), "-t", "1", str(serve)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}", serve
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_debuginfod_fetch_and_cache(
    pod: podsim.SimPod, tmp_path: Path, debuginfod_server: tuple[str, Path]
) -> None:
    url, served = debuginfod_server
    exe, debug, build_id = _stripped_c(tmp_path)
    shutil.copy2(debug, served / "prog.debug")
    # Wait until the server has indexed it (it rescans every second with -t 1).
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.get(f"{url}/buildid/{build_id}/debuginfo", timeout=5)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "debuginfod never served the debug file"
        time.sleep(0.5)
    cache = Path(tempfile.mkdtemp(prefix="dbgcache-", dir=pod.workdir))
    agent = podsim.start_agent(
        pod,
        env={
            # a server that is down first: skipped, the next one answers
            "TRACECAR_AGENT_DEBUGINFOD_URLS": f"http://127.0.0.1:{_free_port()} {url}",
            "TRACECAR_AGENT_DEBUGINFOD_CACHE_DIR": str(cache),
        },
        ready_timeout=AGENT_READY_S,
    )
    app = pod.run("cfetch", ["/srv/prog"], files={"prog": exe})
    try:
        time.sleep(0.5)
        with agent.client() as client:
            stacks, meta = profile(client, {"pid": app.pid, "duration_s": 2})
            assert any(s.endswith(";crunch_numbers") for s in stacks), stacks
            (entry,) = symbols_of(meta, "prog")
            assert entry["source"] == "debuginfod" and url in entry["detail"], entry
            assert (cache / f"{build_id}.debug").is_file()
            # The second profile is served from the agent's cache.
            stacks, meta = profile(client, {"pid": app.pid, "duration_s": 1})
            (entry,) = symbols_of(meta, "prog")
            assert entry["source"] == "debuginfod" and entry["detail"] == "cached", entry
    finally:
        app.stop()
        agent.container.stop()


@pytest.mark.parametrize("build", ["unstripped", "stripped-debug-file"])
def test_native_inlined_function_is_its_own_frame(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path, build: str
) -> None:
    exe = compile_c(INLINE_C, tmp_path / "prog")
    files: dict[str, Path] = {"prog": exe}
    argv = ["/srv/prog"]
    if build == "stripped-debug-file":
        need("objcopy")
        debug = tmp_path / "prog.debug"
        subprocess.run(["objcopy", "--only-keep-debug", str(exe), str(debug)], check=True)
        subprocess.run(["objcopy", "--strip-all", str(exe)], check=True)
        out = subprocess.run(["readelf", "-n", str(exe)], capture_output=True, text=True)
        build_id = out.stdout.split("Build ID:")[1].split()[0]
        dest = f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
        files["prog.debug"] = debug
        argv = _private_debug_dir({"prog.debug": dest})
    app = pod.run(f"cinline-{build[:5]}", argv, files=files)
    try:
        time.sleep(0.5)
        stacks, meta = profile_until(
            client,
            {"pid": app.pid, "duration_s": 3, "frequency_hz": 199},
            lambda st: share(st, "hot_loop;scramble_bits", "hot_loop")[1] >= 30,
        )
    finally:
        app.stop()
    inlined, of = share(stacks, "hot_loop;scramble_bits", "hot_loop")
    assert of >= 30, stacks
    # scramble_bits does 8 times hot_loop's own loop's work: most of hot_loop's samples.
    assert inlined / of >= 0.5, (inlined, of, stacks)
    (entry,) = symbols_of(meta, "prog")
    assert entry["source"] == ("symtab" if build == "unstripped" else "build-id path"), entry
    assert "DWARF" in entry["inlined"], entry
    assert any("inlined calls as frames" in n for n in meta["metadata"]["notes"])


def _cluster_etcd() -> Path:
    import glob

    found = sorted(glob.glob("/var/cache/tracecar/cluster/bin/*/etcd"))
    if not found:
        pytest.skip("no cluster build cached (scripts/cluster builds etcd from source)")
    return Path(found[-1])


ETCD_PUT_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
   counter = counter + 1
   local key = "a2V5" .. string.format("%06d", counter % 1000)
   return wrk.format(nil, "/v3/kv/put", nil,
      '{"key": "' .. key .. '", "value": "dmFsdWUtdmFsdWUtdmFsdWU="}')
end
"""


def test_stripped_etcd_under_load_names_its_functions(
    pod: podsim.SimPod, client: httpx.Client, tmp_path: Path
) -> None:
    etcd = _cluster_etcd()
    need("wrk")
    out = subprocess.run(["readelf", "-S", str(etcd)], capture_output=True, text=True)
    assert ".symtab" not in out.stdout, "the cluster's etcd is expected stripped (-s -w)"
    client_port, peer_port = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    app = pod.run(
        "etcd",
        [
            "/srv/etcd",
            "--name=t",
            "--data-dir=/tmp/etcd-data",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=t={peer}",
            "--listen-metrics-urls=",
            "--unsafe-no-fsync",
            "--log-level=error",
        ],
        files={"etcd": etcd},
    )
    script = tmp_path / "put.lua"
    script.write_text(ETCD_PUT_LUA)
    wrk = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "etcd did not start"
            time.sleep(0.5)
        wrk = subprocess.Popen(
            ["wrk", "-t1", "-c8", "-d120s", "-s", str(script), url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        stacks, meta = profile_until(
            client,
            {"pid": app.pid, "duration_s": 4, "frequency_hz": 99},
            lambda st: sum(st.values()) >= 20,
        )
    finally:
        if wrk is not None:
            wrk.kill()
            wrk.wait()
        app.stop()
    (entry,) = symbols_of(meta, "etcd")
    assert entry["source"] == "pclntab" and "inlined calls" in entry["detail"], entry
    total = sum(stacks.values())
    etcd_named = sum(n for s, n in stacks.items() if "go.etcd.io/" in s)
    assert total >= 20, stacks
    # The puts run etcd's own code: a good part of the samples name its packages.
    assert etcd_named / total >= 0.2, (etcd_named, total)
    assert not any(s.endswith(";[etcd]") for s in stacks), "unnamed leaf frames in etcd"


def test_stripped_go_functions_are_listed_for_probes(
    pod: podsim.SimPod, client: httpx.Client, go_builds: tuple[Path, Path]
) -> None:
    """Uprobes need addresses: a stripped Go binary's come from its pclntab, listed with
    the same names and addresses as the unstripped build's .symtab gives."""
    full, stripped = go_builds
    listed = {}
    for name, exe in (("full", full), ("stripped", stripped)):
        app = pod.run(f"go-list-{name}", [f"/srv/{name}"], files={name: exe})
        try:
            time.sleep(0.5)
            r = client.get(
                f"/processes/{app.pid}/symbols", params={"match": r"^main\.(verify|hot)$"}
            )
        finally:
            app.stop()
        assert r.status_code == 200, r.text
        listed[name] = sorted((s["name"], s["size"] > 0) for s in r.json()["symbols"])
    assert listed["stripped"] == listed["full"] == [("main.hot", True), ("main.verify", True)]
