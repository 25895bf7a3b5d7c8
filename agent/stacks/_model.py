"""The shapes of a stack snapshot: what ``GET /processes/{pid}/stack`` answers in JSON.

Frames are innermost first (``frames[0]`` is where the thread is now), as every
one of the tools prints them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agent.procfs import Runtime

RequestedRuntime = Literal["auto", "python", "java", "native"]
"""Whose terms the stacks are in: ``auto`` picks from the process's runtime."""

Kind = Literal["python", "python+native", "java", "native"]
"""What the frames are: Python functions, Python and C mixed, Java methods, native code."""

Tool = Literal["py-spy", "jattach", "gdb"]

Format = Literal["json", "text"]


class Frame(BaseModel):
    function: str = Field(description="Function or method; `??` when the tool found no symbol")
    file: str | None = Field(default=None, description="Source file, as the process sees it")
    line: int | None = Field(default=None, description="Line in `file`, when known")
    module: str | None = Field(
        default=None,
        description="The shared object (native frames) or Java module (`java.base@17`)",
    )
    address: str | None = Field(default=None, description="Native frames: the pc, in hex")


class ThreadStack(BaseModel):
    tid: int | None = Field(description="The thread's id in the pod's PID namespace")
    name: str | None = Field(default=None, description="The thread's name, when the tool has one")
    state: str | None = Field(
        default=None,
        description="Python: `active` or `idle` (+`gil`); Java: `Thread.State` "
        "(`TIMED_WAITING (sleeping)`); native: not given",
    )
    frames: list[Frame] = Field(description="Innermost first")


class StackSnapshot(BaseModel):
    """Every thread's stack at one moment, in the runtime's own terms."""

    pid: int
    runtime: Runtime = Field(description="The process's runtime, as GET /processes/{pid} says")
    kind: Kind = Field(description="What the frames are")
    tool: Tool
    taken_at: float = Field(description="Unix time the snapshot was taken")
    duration_ms: float = Field(description="How long the tool ran")
    threads: list[ThreadStack]
    notes: list[str] = Field(
        default_factory=list, description="What this kind of snapshot does not show"
    )
