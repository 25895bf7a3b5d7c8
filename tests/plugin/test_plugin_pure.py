"""The plugin's pure parts: argument parsing, targets, reading a pod, the ephemeral
container, the merge of many pods' stacks, the terminal output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubectl_tracecar import _attach, _cli, _merge, _output, _pods
from kubectl_tracecar.__main__ import main
from kubectl_tracecar._kube import selector_string
from kubectl_tracecar._targets import Target, parse_duration, parse_target
from kubectl_tracecar.commands import COMMANDS, probe, profile, stack, trace
from kubectl_tracecar.commands._base import Pods, output_format
from kubectl_tracecar.commands._reach import agent_image
from kubectl_tracecar.commands.profile import Progress
from kubectl_tracecar.errors import USAGE, NotFound, PluginError, Unsupported, UsageError
from tests.plugin.support import options
from tracecar_contract import CAPABILITIES, DEFAULT_CORE_IMAGE, DEFAULT_IMAGE, is_core_image


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web-1", Target("pod", "web-1")),
        ("pod/web-1", Target("pod", "web-1")),
        ("po/web-1", Target("pod", "web-1")),
        ("deploy/web", Target("deployment", "web")),
        ("deployments/web.v2", Target("deployment", "web.v2")),
    ],
)
def test_targets_as_kubectl_spells_them(text: str, expected: Target) -> None:
    assert parse_target(text, selector=None) == expected


@pytest.mark.parametrize(
    ("text", "selector", "message"),
    [
        (None, None, "name a target"),
        ("svc/web", None, "unsupported resource type 'svc'"),
        ("pod/Web_1", None, "invalid pod name 'Web_1'"),
        ("pod/" + "a" * 254, None, "invalid pod name"),
        ("web", "app=web", "not both"),
        (None, "app=web;rm -rf", "invalid label selector"),
    ],
)
def test_bad_targets_say_what_is_allowed(
    text: str | None, selector: str | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        parse_target(text, selector=selector)


def test_selectors_pass_through() -> None:
    assert parse_target(None, selector="app=web,tier in (a,b)") == Target(
        "selector", "app=web,tier in (a,b)"
    )
    assert (
        selector_string(
            {
                "matchLabels": {"b": "2", "a": "1"},
                "matchExpressions": [
                    {"key": "t", "operator": "In", "values": ["x", "y"]},
                    {"key": "gone", "operator": "DoesNotExist"},
                ],
            }
        )
        == "a=1,b=2,t in (x,y),!gone"
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("2m", 120), ("1.5h", 5400), ("500ms", 0.5), ("7", 7)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0s", "-1s", "10x", "", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="positive number"):
        parse_duration(text)


def test_global_flags_before_or_after_the_command() -> None:
    a = _cli.parse(["-n", "shop", "--context", "prod", "ps", "web-1"])
    b = _cli.parse(["ps", "web-1", "-n", "shop", "--context", "prod"])
    for inv in (a, b):
        assert (inv.kube.namespace, inv.kube.context, inv.command.name, inv.options.pods) == (
            "shop",
            "prod",
            "ps",
            Pods(Target("pod", "web-1")),
        )
    assert _cli.parse(["ps", "web-1"]).kube.namespace is None


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    commands = (
        "status",
        "ps",
        "profile",
        "stack",
        "probe",
        "trace",
        "attach",
        "diff",
        "dump",
        "counters",
        "recorder",
        "memory",
        "heapdump",
    )
    assert {c.name for c in COMMANDS} == set(commands)
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            _cli.parse([cmd, "--help"])
        assert e.value.code == 0
        assert "example:" in capsys.readouterr().out


def test_request_bodies() -> None:
    p = options(["profile", "web", "-c", "app", "-F", "49", "-d", "5s"])
    assert p.duration_s == 5.0  # parsed once, when the options are completed
    assert profile.request_body(p) == {"duration_s": 5.0, "container": "app", "frequency_hz": 49}
    by_name = options(["profile", "web", "--process", "gunicorn", "-c", "app"])
    assert (by_name.process, by_name.container) == ("gunicorn", "app")
    # --process is resolved to pids in each pod (in -c's container): those are sent
    assert profile.request_body(by_name, pids=[7, 9]) == {"duration_s": 30.0, "pids": [7, 9]}
    with pytest.raises(UsageError, match="not both"):
        options(["profile", "web", "--pid", "3", "--process", "x"])
    py = options(["profile", "web", "--pid", "3", "--profiler", "py-spy", "--python-native"])
    assert profile.request_body(py) == {
        "duration_s": 30.0, "pid": 3, "profiler": "py-spy", "python_native": True,
    }  # fmt: skip
    st = options(["stack", "web", "--pid", "7", "--native", "--runtime", "python"])
    assert stack.query(st) == {"format": "text", "runtime": "python", "native": "true"}
    assert stack.query(options(["stack", "web", "-o", "json"])) == {"format": "json"}
    off = options(["profile", "web", "--type", "off-cpu", "-d", "2s"])
    assert profile.request_body(off) == {"duration_s": 2.0, "type": "off-cpu"}
    mem = options(["profile", "web", "--type", "alloc", "--python-frames", "8"])
    assert profile.request_body(mem) == {"duration_s": 30.0, "type": "alloc", "python_frames": 8}
    c_view = options(["profile", "web", "--type", "leak", "--python-frames", "0"])
    assert profile.request_body(c_view)["python_frames"] == 0
    with pytest.raises(UsageError, match="--python-frames applies to --type alloc and leak"):
        options(["profile", "web", "--python-frames", "8"])
    q = options(
        [
            "probe",
            "web",
            "--function",
            "add3",
            "--args",
            "int, str",
            "--retval",
            "--histogram",
            "arg0",
        ]
    )
    assert probe.request_body(q, 42) == {
        "pid": 42,
        "function": "add3",
        "args": ["int", "str"],
        "retval": True,
        "mode": "histogram",
        "of": "arg0",
    }
    py = options(
        ["probe", "web", "--python-function", "slow", "--python-file", "app.py", "-d", "5s"]
    )
    assert probe.request_body(py, 42) == {
        "pid": 42,
        "python_function": "slow",
        "python_file": "app.py",
        "duration_s": 5.0,
    }
    u = options(["probe", "web", "--usdt", "python:gc__start", "--count"])
    assert probe.request_body(u, 42) == {"pid": 42, "usdt": "python:gc__start", "mode": "count"}
    with pytest.raises(SystemExit):
        _cli.parse(["probe", "web", "--function", "f", "--usdt", "a:b"])
    t = options(["trace", "web", "--python", "app*", "--ust", "prov:*", "-d", "10s"])
    assert trace.request_body(t)["max_duration_s"] == 310.0  # stopped by us at 10 s
    assert trace.request_body(t)["events"] == [
        {"domain": "python", "names": ["app*"]},
        {"domain": "userspace", "names": ["prov:*"]},
    ]
    with pytest.raises(UsageError, match="name what to trace"):
        options(["trace", "web"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["probe", "web", "--function", "f", "--args", "int,float"], "invalid value 'float'"),
        (["probe", "web", "--usdt", "no-colon"], "does not match"),
        (["probe", "web", "--function", "f", "--pid", "0"], "outside 1..4194304"),
        (["profile", "web", "-c", "-bad"], "expected one argument"),
        (["profile", "web", "-c", "a b"], "does not match"),
        (["counters", "web", "--pid", "7", "--interval", "61"], "outside 1..60"),
        (["trace", "web", "--ust", "a,b"], "does not match"),
    ],
)
def test_values_the_agent_would_refuse_are_usage_errors_here(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        _cli.parse(argv)
    assert e.value.code == USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("flame.svg", "svg"),
        ("x.folded", "folded"),
        ("x.speedscope.json", "speedscope"),
        ("x.pb.gz", "pprof"),
        ("perf.data", "perf_data"),
    ],
)
def test_output_format_by_extension(name: str, fmt: str) -> None:
    assert output_format(Path(name)) == fmt


def test_unknown_output_extension() -> None:
    with pytest.raises(UsageError, match=r"\.svg"):
        output_format(Path("flame.png"))


def _pod(**spec: Any) -> dict[str, Any]:
    status = spec.pop("status", {"phase": "Running"})
    return {
        "metadata": {"name": "web-1", "annotations": spec.pop("annotations", {})},
        "spec": {"containers": [{"name": "app"}, {"name": "side"}], **spec},
        "status": status,
    }


def test_find_an_injected_agent_with_its_port_and_token() -> None:
    agent = {
        "name": "tracecar-agent",
        "image": "reg/agent:1",
        "env": [
            {"name": "TRACECAR_AGENT_PORT", "value": "7781"},
            {"name": "TRACECAR_AGENT_TOKEN", "value": "s3cret"},
            {"name": "TRACECAR_AGENT_POD_NAME", "valueFrom": {"fieldRef": {}}},
        ],
    }
    pod = _pod(
        initContainers=[agent],
        status={
            "phase": "Running",
            "initContainerStatuses": [{"name": "tracecar-agent", "state": {"running": {}}}],
        },
    )
    found = _pods.find_agent(pod)
    assert (found.how, found.port, found.token, found.running) == ("injected", 7781, "s3cret", True)


def test_the_newest_running_attached_agent_wins() -> None:
    eph = [{"name": "tracecar-agent-aaaaa"}, {"name": "tracecar-agent-bbbbb"}, {"name": "dbg"}]
    statuses = [
        {"name": "tracecar-agent-aaaaa", "state": {"running": {}}},
        {"name": "tracecar-agent-bbbbb", "state": {"terminated": {"reason": "Completed"}}},
    ]
    pod = _pod(
        ephemeralContainers=eph,
        status={"phase": "Running", "ephemeralContainerStatuses": statuses},
    )
    found = _pods.find_agent(pod)
    assert (found.how, found.container, found.running) == ("attached", "tracecar-agent-aaaaa", True)
    statuses[0]["state"] = {"terminated": {"reason": "Completed"}}
    found = _pods.find_agent(pod)
    assert (found.container, found.state) == ("tracecar-agent-bbbbb", "terminated: Completed")
    assert _pods.find_agent(_pod()).how == "none"


def test_a_full_agent_attached_beside_an_injected_core_agent_wins() -> None:
    core = {"name": "tracecar-agent", "image": "reg/tracecar-agent-core:1"}
    full = {"name": "tracecar-agent-ccccc", "image": "reg/tracecar-agent:1"}
    status = {
        "phase": "Running",
        "initContainerStatuses": [{"name": "tracecar-agent", "state": {"running": {}}}],
        "ephemeralContainerStatuses": [{"name": "tracecar-agent-ccccc", "state": {"running": {}}}],
    }
    pod = _pod(initContainers=[core], ephemeralContainers=[full], status=status)
    assert _pods.find_agent(pod).container == "tracecar-agent-ccccc"
    # once the attached full agent ended (idle), the injected core agent again
    status["ephemeralContainerStatuses"][0]["state"] = {"terminated": {"reason": "Completed"}}
    assert _pods.find_agent(pod).container == "tracecar-agent"
    # an injected full agent always wins
    pod = _pod(
        initContainers=[dict(core, image="reg/tracecar-agent:1")],
        ephemeralContainers=[full],
        status=status,
    )
    assert _pods.find_agent(pod).container == "tracecar-agent"


def test_is_core_image() -> None:
    assert is_core_image("localhost/tracecar-agent-core:0.1.0")
    assert is_core_image("reg.example:5000/x/tracecar-agent-core@sha256:ab")
    assert not is_core_image("reg.example:5000/tracecar-agent:core")
    assert not is_core_image(None)


def test_target_container() -> None:
    assert _pods.target_container(_pod(), None) == "app"
    annotated = _pod(annotations={"kubectl.kubernetes.io/default-container": "side"})
    assert _pods.target_container(annotated, None) == "side"
    with pytest.raises(NotFound, match="no container 'nope'") as e:
        _pods.target_container(_pod(), "nope")
    assert e.value.hint == "its containers: app, side"


def test_a_pod_that_is_not_running_cannot_be_attached() -> None:
    with pytest.raises(Unsupported, match="Pending"):
        _pods.require_running(_pod(status={"phase": "Pending"}))


def test_the_ephemeral_agent_has_the_webhooks_capabilities_and_nothing_ephemeral_forbids() -> None:
    pod = _pod(containers=[{"name": "app", "ports": [{"containerPort": 7780}]}])
    c = _attach.render(
        pod,
        options=_attach.AttachOptions(
            image="reg/agent:1",
            target="app",
            token="t0k",
            suffix="abcde",
            container_names={"f" * 64: "app"},
        ),
    )
    assert c["name"] == "tracecar-agent-abcde"
    assert c["targetContainerName"] == "app"
    assert c["securityContext"]["capabilities"]["add"] == list(CAPABILITIES)
    assert "privileged" not in c["securityContext"]
    for forbidden in ("resources", "ports", "livenessProbe", "readinessProbe", "startupProbe"):
        assert forbidden not in c
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TRACECAR_AGENT_PORT"] == "7781"  # 7780 is the app's
    assert env["TRACECAR_AGENT_MODE"] == "attached"
    assert env["TRACECAR_AGENT_TOKEN"] == "t0k"
    assert json.loads(env["TRACECAR_AGENT_CONTAINER_NAMES"]) == {"f" * 64: "app"}
    priv = _attach.render(
        pod,
        options=_attach.AttachOptions(
            image="i", target="app", token="t", suffix="x", privileged=True
        ),
    )
    assert priv["securityContext"]["privileged"] is True


def test_merge_of_many_pods_stacks() -> None:
    per_pod = {"a": "main;hot 3\nmain;cold 1\n", "b": "main;hot 2\n"}
    assert _merge.merge_folded(per_pod) == {"main;hot": 5, "main;cold": 1}
    assert _merge.merge_folded(per_pod, by_pod=True) == {
        "pod:a;main;hot": 3,
        "pod:a;main;cold": 1,
        "pod:b;main;hot": 2,
    }
    assert _merge.per_pod_path(Path("out/flame.svg"), "web-1") == Path("out/flame.web-1.svg")
    assert _merge.per_pod_path(Path("p.speedscope.json"), "w") == Path("p.w.speedscope.json")
    assert _merge.per_pod_path(Path("perf.data"), "w") == Path("perf.w.data")


def test_progress_without_a_terminal_prints_a_line_per_tenth(
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = Progress(["a", "b"])
    for f in (0.0, 0.05, 0.1, 0.5, 0.55, 1.0):
        p.update("a", f, "recording")
    assert capsys.readouterr().err.splitlines() == [
        "a: recording 0%",
        "a: recording 10%",
        "a: recording 50%",
        "a: recording 100%",
    ]


def test_terminal_output() -> None:
    text = _output.table([("app", 7, "python")], ["container", "pid", "runtime"])
    assert text.splitlines() == ["CONTAINER   PID   RUNTIME", "app         7     python"]
    hist = _output.histogram(
        [{"min": 1024, "max": 2047, "count": 4}, {"min": 2048, "max": 4095, "count": 1}],
        unit="ns",
        width=8,
    )
    assert hist.splitlines() == [
        "[1.024us, 2.048us)  4 |@@@@@@@@|",
        "[2.048us, 4.096us)  1 |@@      |",
    ]
    assert _output.event_line({"pid": 3, "tid": 4, "arg1": "x", "arg0": 1, "retval": 2}) == (
        'pid=3 tid=4 arg0=1 arg1="x" retval=2'
    )
    py = {"pid": 3, "tid": 3, "function": "slow", "file": "/srv/app.py", "line": 7}
    assert _output.event_line({**py, "latency_ns": 50112834}) == (
        "pid=3 tid=3 slow (/srv/app.py:7) latency=50.1128ms"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile"], "name a target"),
        (["ps", "-o", "json"], "name a target"),
        (["attach"], "name a target"),
        (["status", "svc/web"], "unsupported resource type 'svc'"),
        (["profile", "web-1", "-d", "soon"], "invalid duration for -d"),
    ],
)
def test_argument_errors_come_before_the_kubeconfig(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A kubeconfig that cannot load: were it read first, its error would hide ours.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == USAGE
    err = capsys.readouterr().err
    assert f"usage: kubectl tracecar {argv[0]}" in err and message in err
    assert "cannot load the kubeconfig" not in err


def test_help_loads_no_client_and_no_service() -> None:
    """`kubectl tracecar --help` (and every command's parser) imports neither the
    kubernetes client nor httpx nor any service: they load when a command needs them
    (the start-up time itself is bench/plugin_bench.py's)."""
    import subprocess
    import sys

    code = (
        "import sys, kubectl_tracecar.__main__ as m; m._cli.build_parser(); "
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    loaded = set(subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split())  # fmt: skip
    heavy = {"kubernetes", "httpx", "urllib3", "agent", "webhook", "certs", "servicelog"}
    assert loaded & heavy == set()
    assert "kubectl_tracecar" in loaded


class _WebhookEnv:
    def __init__(self, env: dict[str, str] | None) -> None:
        self.env = env

    def deployment_env(self, namespace: str, name: str, container: str) -> dict[str, str]:
        if self.env is None:
            raise PluginError("no webhook installed")
        return self.env


@pytest.mark.parametrize(
    ("variant", "env", "image"),
    [
        (None, None, DEFAULT_IMAGE),
        ("core", None, DEFAULT_CORE_IMAGE),
        ("full", {"TRACECAR_WEBHOOK_AGENT_IMAGE": "reg/a:2"}, "reg/a:2"),
        (
            "core",
            {
                "TRACECAR_WEBHOOK_AGENT_IMAGE": "reg/a:2",
                "TRACECAR_WEBHOOK_AGENT_CORE_IMAGE": "reg/c:2",
            },
            "reg/c:2",
        ),
    ],
)
def test_attach_variant_picks_the_webhooks_image(
    variant: str | None, env: dict[str, str] | None, image: str
) -> None:
    o = options(["attach", "web-1", *(["--variant", variant] if variant else [])])
    assert o.request.variant == variant
    assert agent_image(_WebhookEnv(env), None, o.request.variant) == image  # type: ignore[arg-type]
    assert agent_image(_WebhookEnv(env), "reg/mine:1", variant) == "reg/mine:1"  # type: ignore[arg-type]
