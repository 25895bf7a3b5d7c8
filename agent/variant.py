"""The agent image's variant, and what the ``core`` image leaves out.

Owns the one table of which tools only the full image carries, which capabilities
each one serves, and the words that tell a user how to get the full image: the
``tracecar.dev/image-variant`` pod annotation (a re-created pod gets the full agent)
or ``kubectl tracecar attach POD --variant full`` (the full agent beside this one, no
restart). ``GET /capabilities`` shows the table; the app's error handlers turn a
"tool missing" error of a core agent into a 409 that says it (:func:`explain`).

The variant comes from ``TRACECAR_AGENT_IMAGE_VARIANT``, which each image's
Dockerfile target sets; an agent run any other way (the host, the tests) is ``full``:
it has whatever tools are installed, and a missing one is an ordinary 503.
"""

from __future__ import annotations

import re
from typing import Final, Literal, NotRequired

from typing_extensions import TypedDict  # pydantic's schemas need it before Python 3.12

Variant = Literal["full", "core"]

FULL_ONLY: Final[dict[str, str]] = {
    "bpftrace": "probes through bpftrace (POST /probes: histograms, user stacks, USDT "
    "probes; plain uprobes still work through perf probe), off-CPU profiles by frame "
    "pointers, the flight recorder (POST /recorder, triggers' and continuous "
    "profiles' source) and memory profiles of native code (alloc and leak on the C "
    "allocator; CPython processes still profile in Python frames)",
    "lttng": "LTTng sessions (/lttng/sessions)",
    "lttng-sessiond": "LTTng sessions (/lttng/sessions)",
    "babeltrace2": "reading LTTng traces (/lttng/sessions/{id}/events)",
    "gdb": "native stack snapshots (GET /processes/{pid}/stack for non-Python, non-Java "
    "processes) and core dumps by gcore (POST /processes/{pid}/dump, but .NET's createdump)",
    "gcore": "core dumps by gcore (POST /processes/{pid}/dump, but .NET's createdump)",
}
"""Tool -> the capabilities that need it, for the tools the core image does not carry.
The core image has perf, py-spy, jattach and the agent: CPU profiles of every runtime
(perf, py-spy), plain uprobes (perf probe), memory profiles of CPython processes in
Python frames, Python and Java stack snapshots, .NET traces and counters, sinks."""

HOW_TO_GET_FULL: Final = (
    "use the full agent image: annotate the pod template "
    "'tracecar.dev/image-variant: full' (its pods are re-created with the full agent), "
    "or attach the full agent beside this one without a restart: "
    "'kubectl tracecar attach POD --variant full'"
)

_TOOL_WORD = re.compile(
    r"(?<![\w-])("
    + "|".join(sorted(map(re.escape, FULL_ONLY), key=len, reverse=True))
    + r")(?![\w-])"
)


def missing_tool(detail: str, tool: str | None = None, *, by_text: bool = True) -> str | None:
    """The full-only tool an error is about: its ``tool`` field, else (``by_text``) the
    first one its message names; None when it names none."""
    if tool in FULL_ONLY:
        return tool
    if not by_text:
        return None
    m = _TOOL_WORD.search(detail)
    return m.group(1) if m else None


def explain(
    variant: Variant, *, detail: str, tool: str | None = None, by_text: bool = True
) -> dict[str, str] | None:
    """For a core agent's "tool missing" error: the body of the 409 that replaces it
    (what needs the full image and how to get it); None when the error is another one.
    ``by_text``: the message may name the tool (a 503's does; a 409's ``tool`` field
    must)."""
    if variant != "core":
        return None
    name = missing_tool(detail, tool, by_text=by_text)
    if name is None:
        return None
    return {
        "detail": f"{detail.rstrip('. ')}. This agent runs the core image, without {name}: "
        f"{FULL_ONLY[name]} need the full image; {HOW_TO_GET_FULL}",
        "tool": name,
        "image_variant": variant,
        "needs_image_variant": "full",
    }


class Image(TypedDict):
    """The ``image`` section of ``GET /capabilities``: a core image says what it lacks."""

    variant: Variant
    reason: str
    needs_full_image: NotRequired[dict[str, str]]
    """A tool only the full image has -> what needs it."""
    how_to_get_full: NotRequired[str]


def describe(variant: Variant) -> Image:
    """The ``image`` section of ``GET /capabilities``."""
    if variant == "full":
        return {"variant": "full", "reason": "every capability's tools are in this image"}
    return {
        "variant": "core",
        "reason": "perf, py-spy and jattach only: CPU profiles of every runtime, plain "
        "uprobes (perf probe), Python and Java stacks; " + HOW_TO_GET_FULL + " for the rest",
        "needs_full_image": dict(FULL_ONLY),
        "how_to_get_full": HOW_TO_GET_FULL,
    }


def tool_reason(variant: Variant, tool: str) -> str | None:
    """Why a tool is missing, in a core agent: not in this image (None otherwise)."""
    if variant != "core" or tool not in FULL_ONLY:
        return None
    return (
        f"not in the agent's core image: {FULL_ONLY[tool]} need the full image; {HOW_TO_GET_FULL}"
    )
