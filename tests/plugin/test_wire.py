"""The plugin's flags against the agent's own request schema, so the two cannot drift.

The plugin may not import the agent (an import-linter contract); this test may import
both. Each command declares, per flag, the agent's request field it fills
(:class:`kubectl_tracecar.commands._base.Wire`); here every one is checked against the
agent's ``/openapi.json`` (generated from its pydantic request models): the field
exists, the flag's choices are the agent's values (each one the agent takes and the
flag leaves out is named in ``not_offered``), its integer bounds and its pattern are
the agent's; and request bodies the plugin builds from real command lines validate
against the agent's JSON schema for that request.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.app import create_app
from agent.settings import Settings
from kubectl_tracecar import _cli
from kubectl_tracecar.commands import COMMANDS, dump, probe, profile, recorder, trace
from kubectl_tracecar.commands._base import Wire
from tests.plugin.support import options

# Flags with choices that are the plugin's own (not a request field).
LOCAL_CHOICES = {
    ("status", "--output"),
    ("ps", "--output"),
    ("memory", "--output"),
    ("stack", "--output"),
    ("attach", "--output"),
    ("attach", "--variant"),  # the image to attach: the plugin's and the webhook's, not the agent's
    ("recorder", "action"),
}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    openapi: dict[str, Any] = create_app(Settings(data_dir=Path("/nonexistent"))).openapi()
    return openapi


def _unwrap(doc: dict[str, Any], node: dict[str, Any], *, items: bool = True) -> dict[str, Any]:
    """A schema without its ``$ref``, its ``| None`` and (``items``) its array."""
    while True:
        if "$ref" in node:
            node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
        elif "anyOf" in node:
            non_null = [n for n in node["anyOf"] if n.get("type") != "null"]
            assert len(non_null) == 1, node
            node = non_null[0]
        elif items and node.get("type") == "array":
            node = node["items"]
        else:
            return node


def field_schema(doc: dict[str, Any], wire: Wire) -> dict[str, Any]:
    method, path = wire.endpoint.split(" ", 1)
    assert path in doc["paths"], f"{wire.flag}: the agent has no {path}"
    op = doc["paths"][path].get(method.lower())
    assert op is not None, f"{wire.flag}: the agent has no {wire.endpoint}"
    first, *rest = wire.field.split(".")
    params = {p["name"]: p["schema"] for p in op.get("parameters", [])}
    if first in params:
        node = params[first]
    else:
        body = op["requestBody"]["content"]["application/json"]["schema"]
        props = _unwrap(doc, body).get("properties", {})
        assert first in props, f"{wire.flag}: {wire.endpoint} has no field {first!r}"
        node = props[first]
    for name in rest:
        props = _unwrap(doc, node).get("properties", {})
        assert name in props, f"{wire.flag}: {wire.endpoint} has no field {wire.field!r}"
        node = props[name]
    return _unwrap(doc, node, items=wire.items)


WIRES = [(c.name, w) for c in COMMANDS for w in c.wires]


@pytest.mark.parametrize(
    ("command", "wire"), WIRES, ids=[f"{c}:{w.flag}:{w.field}" for c, w in WIRES]
)
def test_each_flag_matches_the_agents_field(doc: dict[str, Any], command: str, wire: Wire) -> None:
    schema = field_schema(doc, wire)
    enum = schema.get("enum")
    if wire.choices or enum is not None:
        assert enum is not None, f"{command} {wire.flag}: the agent's {wire.field} has no values"
        assert set(wire.choices) <= set(enum), (
            f"{command} {wire.flag} offers {sorted(set(wire.choices) - set(enum))}, "
            f"which the agent does not take (it takes {enum})"
        )
        assert set(enum) - set(wire.choices) == set(wire.not_offered), (
            f"{command} {wire.flag}: the agent takes {sorted(set(enum) - set(wire.choices))} "
            "too: offer them, or name them in not_offered with the reason"
        )
    assert (wire.ge, wire.le) == (schema.get("minimum"), schema.get("maximum")), (
        f"{command} {wire.flag}: bounds {wire.ge}..{wire.le}, the agent's "
        f"{schema.get('minimum')}..{schema.get('maximum')}"
    )
    if wire.ge is not None or wire.le is not None:
        assert schema.get("type") == "integer"
    assert wire.pattern == schema.get("pattern"), f"{command} {wire.flag}: pattern drifted"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return _cli.build_parser()[1]


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_flag_with_choices_is_generated_from_its_wire(command: str) -> None:
    cmd = next(c for c in COMMANDS if c.name == command)
    by_flag = {w.flag: w for w in cmd.wires}
    for action in _subparsers()[command]._actions:
        if action.choices is None or isinstance(action, argparse._SubParsersAction):
            continue
        names = action.option_strings or [action.dest]
        wire = next((by_flag[n] for n in names if n in by_flag), None)
        if wire is None:
            assert any((command, n) in LOCAL_CHOICES for n in names), (
                f"{command} {names}: a flag with choices and no Wire to the agent's field"
            )
            continue
        assert list(action.choices) == list(wire.choices)


BODIES: list[tuple[str, list[str], Any]] = [
    *[
        ("POST /profiles", ["profile", "web", "--type", t, "--profiler", p], profile.request_body)
        for t in profile.TYPE.choices
        for p in profile.PROFILER.choices
    ],
    (
        "POST /profiles",
        ["profile", "web", "--pid", "3", "-F", "49", "-d", "5s", "--python-native", "--push"],
        profile.request_body,
    ),
    ("POST /profiles", ["profile", "web", "-c", "app"], profile.request_body),
    (
        "POST /profiles",
        ["profile", "web", "--type", "alloc", "--python-frames", "0"],
        profile.request_body,
    ),
    (
        "POST /profiles",
        ["profile", "web", "--process", "gunicorn"],
        lambda o: profile.request_body(o, pids=[7, 9]),
    ),
    *[
        ("POST /probes", ["probe", "web", "--function", "f", "--args", a, "--retval"], None)
        for a in probe.ARGS.choices
    ],
    *[
        ("POST /probes", ["probe", "web", "--function", "f", "--backend", b, "--count"], None)
        for b in probe.BACKEND.choices
    ],
    ("POST /probes", ["probe", "web", "--function", "f", "--histogram", "arg0", "-d", "2s"], None),
    ("POST /probes", ["probe", "web", "--usdt", "python:gc__start", "--count"], None),
    (
        "POST /probes",
        [
            "probe",
            "web",
            "--python-function",
            "slow",
            "--python-file",
            "app.py",
            "--histogram",
            "latency",
            "--binary",
            "libpython3.12",
        ],
        None,
    ),
    (
        "POST /lttng/sessions",
        ["trace", "web", "--python", "app*", "--ust", "prov:*", "--jul", "com.shop", "-d", "9s"],
        trace.request_body,
    ),
    (
        "POST /recorder",
        [
            "recorder",
            "web",
            "start",
            "-c",
            "app",
            "-F",
            "19",
            "--retain",
            "30m",
            "--max-bytes",
            "8Mi",
        ],
        recorder.start_body,
    ),
    ("POST /recorder", ["recorder", "web", "start", "--pid", "7"], recorder.start_body),
    *[
        (
            "POST /processes/{pid}/dump",
            ["dump", "web", "--pid", "7", "--type", t],
            dump.request_body,
        )
        for t in dump.TYPE.choices
    ],
]


@pytest.mark.parametrize(
    ("endpoint", "argv", "build"), BODIES, ids=[" ".join(a) for _, a, _ in BODIES]
)
def test_request_bodies_validate_against_the_agents_schema(
    doc: dict[str, Any], endpoint: str, argv: list[str], build: Any
) -> None:
    o = options(argv)
    body = probe.request_body(o, 42) if build is None else build(o)
    method, path = endpoint.split(" ", 1)
    schema = doc["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]
    validator = jsonschema.Draft202012Validator(
        {**schema["schema"], "components": doc["components"]}
    )
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"{argv} -> {body}: {errors}"


def test_the_recorder_writes_the_formats_the_agent_renders() -> None:
    for fmt, name in zip(
        recorder.FORMAT.choices, ("a.svg", "a.folded", "a.speedscope.json", "a.pb.gz"), strict=True
    ):
        assert recorder.output_check(Path(name)) == fmt
