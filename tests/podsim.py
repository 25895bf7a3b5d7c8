"""A pod, reproduced with Linux namespaces, for the agent's integration tests.

Kubernetes with ``shareProcessNamespace: true`` gives a pod one PID namespace and
each container its own mount namespace. This reproduces exactly that::

    host
     └─ pod "infra" (pid 1 of a new PID namespace, own mount ns with /proc of it,
        │           an "emptyDir" tmpfs at /run/lttng shared by every container)
        ├─ container "agent": own mount ns, private /tmp
        └─ container "app":   own mount ns, private /tmp, and its files on a
                              private tmpfs at /srv: a process outside the
                              container reaches them only through /proc/PID/root

Containers are started with ``nsenter --pid --mount`` into the pod and
``unshare --mount`` for their own namespace. Killing the infra process kills the
whole pod (the kernel kills a PID namespace with its init).

Pids: :attr:`Container.pid` is the pid *inside the pod* (what the agent sees and
what requests carry); :attr:`Container.host_pid` is the same process seen from
the host (for the test's own checks).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

REPO = Path(__file__).resolve().parent.parent
APP_MOUNT = "/srv"  # exists and is empty on Debian; each container mounts its own tmpfs here
LTTNG_DIR = "/run/lttng"  # /var/run -> /run on Debian


def _wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _private_tmp(name: str) -> str:
    """Shell that gives a container its own /tmp, as a pod's container has.

    A checkout under /tmp (CI clones anywhere) would vanish under the new tmpfs,
    and with it the agent's code and venv: it is carried across with a bind mount
    parked under the container's /srv and moved back into place.
    """
    tmp = f"mount -t tmpfs -o mode=1777 tmp-{name} /tmp; "
    if not REPO.is_relative_to("/tmp"):
        return tmp
    repo = shlex.quote(str(REPO))
    hold = f"{APP_MOUNT}/.tracecar-repo"
    # Absolute paths: a test may hand the container a PATH under /tmp, gone after the mount.
    mkdir, mount, rmdir = (shutil.which(t) or t for t in ("mkdir", "mount", "rmdir"))
    return (
        f"{mkdir} -p {hold}; {mount} --bind {repo} {hold}; "
        + tmp.replace("mount ", f"{mount} ", 1)
        + f"{mkdir} -p {repo}; {mount} --move {hold} {repo}; {rmdir} {hold}; "
    )


def ns_pid(host_pid: int) -> int:
    """The pid of a host process inside its innermost PID namespace."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise RuntimeError(f"no NSpid for {host_pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


@dataclass
class Container:
    name: str
    launcher: subprocess.Popen[bytes]
    host_pid: int
    pid: int
    log_path: Path

    def alive(self) -> bool:
        return self.launcher.poll() is None and Path(f"/proc/{self.host_pid}").exists()

    def wake_launcher(self) -> None:
        """SIGCONT the nsenter that launched this container.

        util-linux's nsenter, seeing its child stop (as a ptrace attach's SIGSTOP can
        make it, when the tracer is killed mid-attach), stops itself with SIGSTOP and
        waits for a SIGCONT before it forwards one and reaps again. Nothing in a real
        pod sends that, so a container whose process was attached to would never be
        reaped: wake the launcher before waiting on it.
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.launcher.pid, signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.host_pid, sig)
        self.wake_launcher()
        try:
            return self.launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.host_pid, signal.SIGKILL)
            self.wake_launcher()
            return self.launcher.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def read(self, path: str) -> bytes:
        """A file as this container sees it."""
        return Path(f"/proc/{self.host_pid}/root{path}").read_bytes()


@dataclass
class SimPod:
    workdir: Path
    infra: subprocess.Popen[bytes] | None = None
    infra_pid: int = 0
    containers: list[Container] = field(default_factory=list)

    def start(self) -> SimPod:
        self.workdir.mkdir(parents=True, exist_ok=True)
        Path(LTTNG_DIR).mkdir(parents=True, exist_ok=True)
        script = f"mount -t tmpfs -o mode=0755 lttng-emptydir {LTTNG_DIR} && exec sleep infinity"
        self.infra = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--kill-child",  # implies --fork; unshare's death kills the pod's pid 1
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # A test run killed mid-way (SIGTERM, a CI timeout) must not leave pods behind:
            # the kernel kills unshare with it, unshare kills pid 1, and with pid 1 the
            # whole PID namespace (agent, tracers, apps) goes.
            preexec_fn=_die_with_parent,
        )
        # unshare --fork: the pod's pid 1 is unshare's child.
        self.infra_pid = _wait_for(lambda: self._child_of(self.infra.pid), 10, "pod infra")  # type: ignore[union-attr]
        _wait_for(
            lambda: Path(f"/proc/{self.infra_pid}/cmdline").read_bytes().startswith(b"sleep"),
            10,
            "pod infra to be ready",
        )
        return self

    @staticmethod
    def _child_of(pid: int) -> int | None:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return None
        return int(kids[0]) if kids else None

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        files: Mapping[str, Path | str | bytes] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Container:
        """Start a container running ``argv`` in the pod.

        ``files`` maps names under /srv (the container's own filesystem) to a host
        path to copy or to the content itself; the host staging copy is deleted
        once the container has it, so only /proc/PID/root reaches it.
        """
        assert self.infra_pid, "pod not started"
        stage = Path(tempfile.mkdtemp(prefix=f"stage-{name}-", dir=self.workdir))
        for rel, src in (files or {}).items():
            dest = stage / rel.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dest.write_bytes(src)
            elif isinstance(src, str) and not Path(src).exists():
                dest.write_text(src)
            else:
                shutil.copy2(src, dest)
        setup = (
            f"set -e; mount -t tmpfs -o mode=0755 rootfs-{name} {APP_MOUNT}; "
            f'cp -a "$STAGE"/. {APP_MOUNT}/; '
            + _private_tmp(name)
            + (f"cd {shlex.quote(cwd)}; " if cwd else "")
            + 'unset STAGE; exec "$@"'
        )
        log_path = self.workdir / f"{name}.log"
        # The webhook gives every app container its own name in TRACECAR_CONTAINER.
        full_env = {**os.environ, "TRACECAR_CONTAINER": name, **(env or {}), "STAGE": str(stage)}
        launcher = subprocess.Popen(
            [
                "nsenter",
                "-t",
                str(self.infra_pid),
                "--pid",
                "--mount",
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                setup,
                name,
                *argv,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            env=full_env,
        )

        def child() -> int | None:
            if launcher.poll() is not None:
                raise RuntimeError(f"container {name} exited early: {log_path.read_text()}")
            return self._child_of(launcher.pid)

        host_pid = _wait_for(child, 10, f"container {name}")

        # Wait until the container has its files (the exec happened once /srv is populated).
        def started() -> bool:
            if launcher.poll() is not None:
                raise RuntimeError(f"container {name} exited early: {log_path.read_text()}")
            try:
                cmd = Path(f"/proc/{host_pid}/cmdline").read_bytes()
            except FileNotFoundError:
                return False
            # Still nsenter's forked child or unshare (before exec'ing sh), or sh copying /srv.
            # (Empty while an exec is in progress.)
            return bool(cmd) and not cmd.startswith((b"sh\0-c\0set -e", b"nsenter\0", b"unshare\0"))

        _wait_for(started, 15, f"container {name} to exec")
        shutil.rmtree(stage, ignore_errors=True)
        c = Container(name, launcher, host_pid, ns_pid(host_pid), log_path)
        self.containers.append(c)
        return c

    def stop(self) -> None:
        if self.infra is None:
            return
        # Let containers shut down in order (the agent cleans up on SIGTERM) ...
        # A container that will not stop must not keep the pod (and its namespace) alive.
        for c in reversed(self.containers):
            if c.alive():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    c.stop(signal.SIGTERM, timeout=20)
        # ... then the pod itself: killing pid 1 kills everything left in the namespace.
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.infra_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.infra.pid, signal.SIGKILL)
        self.infra.wait(10)
        for c in self.containers:
            c.wake_launcher()
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.launcher.wait(10)
        self.infra = None


@dataclass
class AgentHandle:
    container: Container
    url: str
    data_dir: Path
    token: str | None = None

    def client(self, timeout: float = 120.0, *, authenticated: bool = True) -> httpx.Client:
        """A client of this agent. The timeout is generous on purpose: /healthz answers
        while the app still loads, and a request that arrives then waits for it (10 s
        seen on a busy machine), longer than httpx's default 5 s."""
        send = authenticated and self.token
        headers = {"Authorization": f"Bearer {self.token}"} if send else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)


def start_agent(
    pod: SimPod,
    *,
    env: Mapping[str, str] | None = None,
    token: str | None = None,
    auth: Literal["token", "none"] = "token",
    ready_timeout: float = 30.0,
) -> AgentHandle:
    """Run ``python -m agent`` as a container of the pod and wait until it answers.

    As the webhook does, the agent gets a token in its env (random unless `token` is
    given; :meth:`AgentHandle.client` sends it), or ``TRACECAR_AGENT_AUTH=none``.
    """
    port = free_port()
    if auth == "token" and token is None:
        token = secrets.token_urlsafe(32)
    auth_env = {"TRACECAR_AGENT_TOKEN": token} if token else {"TRACECAR_AGENT_AUTH": "none"}
    data_dir = pod.workdir / f"agent-data-{port}"
    agent_env = {
        "TRACECAR_AGENT_HOST": "127.0.0.1",
        "TRACECAR_AGENT_PORT": str(port),
        "TRACECAR_AGENT_DATA_DIR": str(data_dir),
        "TRACECAR_AGENT_LTTNG_RUN_DIR": "/var/run/lttng",
        "TRACECAR_AGENT_INSTANCE_ID": f"podsim{port}",
        "PYTHONPATH": str(REPO),
        **auth_env,
        **(env or {}),
    }
    c = pod.run("agent", [sys.executable, "-m", "agent"], env=agent_env, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not c.alive():
            raise RuntimeError(f"agent exited: {c.log()}")
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    _wait_for(up, ready_timeout, "agent /healthz")
    return AgentHandle(c, url, data_dir, token)


@contextlib.contextmanager
def sim_pod(workdir: Path | None = None) -> Iterator[SimPod]:
    """A running pod; its work directory is outside /tmp, which containers hide."""
    own = workdir is None
    wd = workdir or Path(tempfile.mkdtemp(prefix="tracecar-podsim-", dir="/var/tmp"))
    pod = SimPod(wd).start()
    try:
        yield pod
    finally:
        pod.stop()
        if own:
            shutil.rmtree(wd, ignore_errors=True)
