"""The real profile and object stores as local processes on loopback, for the tests.

Grafana Pyroscope and MinIO, built from their sources by ``scripts/stores build``
(cached outside the repository; the first run on a machine builds them), each
started in a scratch directory with every listener on 127.0.0.1 and nothing
sent outside (no usage stats, no update checks). :meth:`Pyroscope.stop` and
:meth:`start` on the same directory and ports are a store going away and coming back;
a :class:`Gate` in front of a store is its address going away first, as an agent in
a cluster sees it when a Service loses its endpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.podsim import free_port

REPO = Path(__file__).resolve().parents[1]
MINIO_USER = "tracecar-test"
MINIO_PASSWORD = "tracecar-test-secret"
CPU_TYPE = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
OFFCPU_TYPE = "off_cpu:off_cpu_time:nanoseconds:off_cpu_time:nanoseconds"


def store_binary(name: str) -> Path:
    """The store's binary, built first if this machine has none (minutes, once)."""
    out = subprocess.run(
        [str(REPO / "scripts" / "stores"), "build", name],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"scripts/stores build {name} failed:\n{out.stderr[-4000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith(f"{name}=")][-1]
    return Path(line.split("=", 1)[1])


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@dataclass
class _Process:
    binary: Path
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "server.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 90.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=self.workdir,  # Pyroscope writes ./data and ./data-compactor here
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary.name} exited: {self.log()[-3000:]}")
            return self.ready()

        _wait(up, timeout, f"{self.binary.name} ready")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class MinIO(_Process):
    port: int = field(default_factory=free_port)
    console_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            "server",
            str(self.workdir / "data"),
            "--address",
            f"127.0.0.1:{self.port}",
            "--console-address",
            f"127.0.0.1:{self.console_port}",
            "--quiet",
        ]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MINIO_ROOT_USER": MINIO_USER,
            "MINIO_ROOT_PASSWORD": MINIO_PASSWORD,
            "MINIO_UPDATE": "off",
            "MINIO_BROWSER": "off",
        }

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/minio/health/ready", timeout=2).status_code == 200
        return False

    def client(self, *, secret: str = MINIO_PASSWORD) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=MINIO_USER,
            aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}),
        )

    def agent_env(self, bucket: str, *, secret: str = MINIO_PASSWORD) -> dict[str, str]:
        return {
            "TRACECAR_AGENT_S3_ENDPOINT": self.url,
            "TRACECAR_AGENT_S3_BUCKET": bucket,
            "TRACECAR_AGENT_S3_REGION": "us-east-1",
            "TRACECAR_AGENT_S3_PATH_STYLE": "true",
            "AWS_ACCESS_KEY_ID": MINIO_USER,
            "AWS_SECRET_ACCESS_KEY": secret,
            # Keep boto3 off this machine's own AWS files and the instance metadata address.
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
        }


@dataclass
class Pyroscope(_Process):
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    memberlist_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def argv(self) -> list[str]:
        lo = "127.0.0.1"
        return [
            str(self.binary),
            "-target=all",
            f"-server.http-listen-address={lo}",
            f"-server.http-listen-port={self.http_port}",
            f"-server.grpc-listen-address={lo}",
            f"-server.grpc-listen-port={self.grpc_port}",
            f"-memberlist.bind-addr={lo}",
            f"-memberlist.bind-port={self.memberlist_port}",
            f"-memberlist.advertise-addr={lo}",
            f"-memberlist.advertise-port={self.memberlist_port}",
            f"-distributor.ring.instance-addr={lo}",
            f"-ingester.lifecycler.addr={lo}",
            f"-compactor.ring.instance-addr={lo}",
            f"-overrides-exporter.ring.instance-addr={lo}",
            f"-query-frontend.instance-addr={lo}",
            f"-query-scheduler.ring.instance-addr={lo}",
            f"-store-gateway.sharding-ring.instance-addr={lo}",
            "-storage.backend=filesystem",
            f"-storage.filesystem.dir={self.workdir / 'blocks'}",
            f"-pyroscopedb.data-path={self.workdir / 'head'}",
            "-self-profiling.disable-push=true",
            "-tracing.enabled=false",
            "-usage-stats.enabled=false",
        ]

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/ready", timeout=2).status_code == 200
        return False

    def _query(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/querier.v1.QuerierService/{method}",
            content=json.dumps(body),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def merged(
        self, selector: str, start: float, end: float, profile_type: str = CPU_TYPE
    ) -> dict[str, int]:
        """The merged profile of ``selector`` over ``[start, end]`` (Unix seconds) as
        ``{function: self total}``, from SelectMergeStacktraces' flame graph; empty when
        nothing matched (Pyroscope then answers a bare ``total`` of 0), so a wait for the
        profile to arrive waits for samples, not for an answer."""
        doc = self._query(
            "SelectMergeStacktraces",
            {
                "profileTypeID": profile_type,
                "labelSelector": selector,
                "start": int(start * 1000),
                "end": int(end * 1000),
            },
        )
        graph = doc.get("flamegraph") or {}
        names: list[str] = graph.get("names", [])
        totals: dict[str, int] = {}
        for level in graph.get("levels", []):
            values = [int(v) for v in level.get("values", [])]
            # Each node is 4 numbers: x offset (delta), total, self, name index.
            for i in range(0, len(values), 4):
                name = names[values[i + 3]]
                totals[name] = totals.get(name, 0) + values[i + 2]
        return totals if any(totals.values()) else {}

    def series(
        self, selector: str, start: float, end: float, step_s: float, group_by: list[str]
    ) -> list[dict[str, Any]]:
        doc = self._query(
            "SelectSeries",
            {
                "profileTypeID": CPU_TYPE,
                "labelSelector": selector,
                "start": int(start * 1000),
                "end": int(end * 1000),
                "step": step_s,
                "groupBy": group_by,
            },
        )
        series: list[dict[str, Any]] = doc.get("series", [])
        return series

    def label_values(self, name: str, start: float, end: float) -> list[str]:
        doc = self._query(
            "LabelValues", {"name": name, "start": int(start * 1000), "end": int(end * 1000)}
        )
        names: list[str] = doc.get("names", [])
        return names


class Gate:
    """A TCP forwarder on loopback in front of a store, which the test can cut.

    :meth:`cut` refuses new connections and closes the open ones, so a request on its
    way gets no answer (its sender sees an error and keeps it); :meth:`restore` accepts
    again on the same port. Why a store's own stop is not enough for a "nothing lost"
    test: Pyroscope (v1.21, single binary) answers 200 to pushes while its SIGTERM
    shutdown runs and loses those that arrive around its ingester's final flush
    (measured: 9 and 14 pushes acknowledged in its last ~150 ms, in two of three
    stops). No client can see that loss; cutting the path first leaves only losses
    of our own to find.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            doomed = [*self._open, *([listener] if listener else [])]
        for s in doomed:
            # shutdown() first: close() alone does not wake a thread blocked in
            # accept() or recv() on the socket. The pumps close the connections.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if listener:
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()  # the store is down: the sender sees its connection closed
                continue
            upstream.settimeout(None)
            for s in (client, upstream):  # a relay must not add Nagle's delays
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
            done = threading.Semaphore(0)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst, client, upstream, done), daemon=True
                ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        client: socket.socket,
        upstream: socket.socket,
        done: threading.Semaphore,
    ) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        # Either side gone ends the connection (HTTP clients do not half-close); the
        # second pump to finish closes both sockets.
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if done.acquire(blocking=False):
            with self._lock:
                self._open -= {client, upstream}
            client.close()
            upstream.close()
        else:
            done.release()


def share(totals: dict[str, int], function: str) -> float:
    return sum(v for k, v in totals.items() if function in k) / max(sum(totals.values()), 1)
