"""The images as a user builds them from a fresh clone: no prepared wheels.

`scripts/images` (the e2e stage's `images` fixture) takes the offline path, wheels
built on the host into build/wheels*. Here the same Dockerfiles are built from a copy
of the source tree without build/ (what `git clone` gives), so their `wheels` stage
builds the wheels from PyPI itself; the image must hold the same packages, tools,
user and entrypoint as the offline one. Layers are cached (`--layers`) as a user's
rebuilds are: the tool layers are shared with the offline images, so a warm run
takes seconds and a cold one about two minutes (docs/install.md has the figures).

The only adaptations to this machine: `--build-arg BASE=` names the local Debian base
(no registry is reachable), `--isolation chroot --network host` (see
docs/e2e.md), and this network's TLS-intercepting proxy's CA handed to pip as the
`pip-ca` build secret (the Dockerfiles document it for users behind such a proxy).
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e import realpod

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

BASE = "localhost/debian:bookworm-slim"
SITE = "/opt/tracecar/lib/python3.11/site-packages"
# The installed distributions, and what lies in site-packages (the packages of the
# tracecar wheel among them: agent, webhook, certs, servicelog, ...).
# (The images carry no pip: the distributions are listed by importlib.metadata.)
PIP_LIST = (
    "/opt/tracecar/bin/python -c 'import importlib.metadata as m; "
    'print("\\n".join(f"{d.name}=={d.version}" for d in m.distributions()))\'; '
    f"ls {SITE} | grep -v '[.]dist-info$'"
)


def _source_tree(dest: Path) -> Path:
    """The files a clone has (tracked, plus new files not ignored): no build/, .venv."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=realpod.ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = realpod.ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    assert not (dest / "build").exists()
    return dest


def _ca_bundle() -> str | None:
    paths = ssl.get_default_verify_paths()
    return next((p for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()), None)


def _inspect(image: str) -> tuple[str, str, str, str]:
    fmt = "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Env}}"
    user, entrypoint, env = realpod.podman("image", "inspect", "--format", fmt, image).split("|")
    packages = realpod.podman(
        "run", "--rm", "--ulimit", "host", "--network", "none", "--entrypoint", "sh",
        image, "-c", PIP_LIST,
    )  # fmt: skip
    names = sorted(line.split("==")[0].lower() for line in packages.splitlines())
    assert "tracecar" in names and "servicelog" in names, names
    return user, entrypoint, env, " ".join(names)


@pytest.mark.parametrize(
    ("name", "dockerfile", "target", "offline_image", "tools"),
    [
        (
            "agent",
            "Dockerfile.agent",
            None,
            realpod.AGENT_IMAGE,
            "perf bpftrace lttng babeltrace2 gdb jattach py-spy",
        ),
        ("agent-core", "Dockerfile.agent", "core", realpod.AGENT_CORE_IMAGE, "perf jattach py-spy"),
        ("webhook", "Dockerfile.webhook", None, realpod.WEBHOOK_IMAGE, "tracecar-webhook"),
        ("certs", "Dockerfile.webhook", "certs", realpod.CERTS_IMAGE, "tracecar-certs"),
    ],
)
def test_plain_build_without_prepared_wheels(
    images: None,
    tmp_path: Path,
    name: str,
    dockerfile: str,
    target: str | None,
    offline_image: str,
    tools: str,
) -> None:
    """A plain build (no --target) gives the full agent and the webhook; --target the
    core agent and the certs image, from the same Dockerfiles."""
    context = _source_tree(tmp_path / "clone")
    tag = f"localhost/tracecar-{name}:plain-{secrets.token_hex(3)}"
    args = ["build", "--layers", "--isolation", "chroot", "--network", "host"]
    if target is not None:
        args += ["--target", target]
    args += ["--build-arg", f"BASE={BASE}", "-f", dockerfile, "-t", tag]
    ca = _ca_bundle()
    if ca is not None:
        args += ["--secret", f"id=pip-ca,src={ca}"]
    start = time.monotonic()
    subprocess.run(
        ["podman", *args, str(context)],
        env=realpod.podman_env(),
        check=True,
        capture_output=True,
        timeout=850,
    )
    print(f"plain build of {dockerfile}: {time.monotonic() - start:.1f} s")
    try:
        built, offline = _inspect(tag), _inspect(offline_image)
        assert built == offline  # same user, entrypoint, environment and packages
        realpod.podman(
            "run", "--rm", "--ulimit", "host", "--network", "none", "--entrypoint", "sh",
            tag, "-c", f"set -e; for t in {tools}; do command -v $t; done",
        )  # fmt: skip
    finally:
        realpod.podman("rmi", tag, check=False)
