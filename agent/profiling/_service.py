"""The profiling service: targets -> plan -> a recording job -> its outputs.

:class:`Service` is what :mod:`agent.app` constructs and the profiles router
calls. It checks perf is there and permitted, plans (validating) before a job
exists, runs each recording as a :class:`agent.jobs.JobStore` job (perf maps
copied before and after, then post-processing into every output format),
serves non-default folded views on demand, and stops or deletes profiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from agent import _proc, capabilities, procfs
from agent.errors import Conflict, Invalid, NotFound, Unavailable
from agent.jobs import Job, JobStore, atomic_path, write_atomic
from agent.metrics import Metrics
from agent.profiling import (
    _alloc,
    _asyncprof,
    _offcpu_run,
    _pymem,
    _pysampler,
    _pyspy_record,
    javalloc,
    memplan,
    offcpu_fold,
    outputs,
)
from agent.profiling._artifacts import (
    ARTIFACTS,
    BPFTRACE_OUT,
    FOLDED,
    KIND,
    PERF_DATA,
)
from agent.profiling._perfmaps import PERF_MAP_MAX_BYTES, map_pids, perf_maps_in_tmp
from agent.profiling._pyspy_record import PySpyResult
from agent.profiling._result import (
    DwarfStats,
    ProfileResult,
    PySpyOutcome,
    TargetSeen,
    Unresolved,
)
from agent.profiling._targets import target_facts, traceable
from agent.profiling.offcpu_fold import TimedStats
from agent.profiling.perf_record import Recording, record, restart_note
from agent.profiling.planner import (
    Limits,
    Plan,
    ProfileRequest,
    PySpyRun,
    TargetFacts,
    plan,
)
from agent.settings import Settings
from agent.symbolize import resolver as symbolize
from tracecar_formats import pyspy
from tracecar_formats.collapse import CollapseOptions, format_folded

ProfileJob = Job[ProfileResult]

# An unresolved frame as the collapser writes it: "[libc.so.6]", "[unknown]".
_UNRESOLVED = re.compile(r"\[[^\[\]]+\]")


def profile_type(job: ProfileJob) -> str:
    """A profile's type (``cpu`` or ``off-cpu``); profiles made before types were CPU."""
    return str(job.params.get("type", "cpu"))


class Service:
    def __init__(
        self, settings: Settings, jobs: JobStore, *, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.metrics = metrics or Metrics()
        jobs.register(KIND, ProfileResult)  # job.json's result is read back as the model
        self.metrics.profiles.running.set_function(lambda: len(self.jobs.running(KIND)))
        self.metrics.measure_storage(
            "profiles", lambda: sum(j.size_bytes() for j in self.jobs.of_kind(KIND))
        )
        self.metrics.storage_limit.set(settings.max_storage_bytes)
        self.sampler = _pysampler.Search(
            prebuilt=settings.python_alloc_sampler_dir,
            build_dir=self.jobs.data_dir / KIND / "_native",
        )
        self.limits = Limits(
            default_duration_s=settings.default_duration_s,
            max_duration_s=settings.max_duration_s,
            default_frequency_hz=settings.default_frequency_hz,
            max_frequency_hz=settings.max_frequency_hz,
            timeout_slack_s=settings.perf_timeout_slack_s,
            offcpu_max_stacks_per_s=settings.offcpu_max_stacks_per_s,
            offcpu_max_dwarf_stacks_per_s=settings.offcpu_max_dwarf_stacks_per_s,
            python_alloc_interval_bytes=settings.python_alloc_interval_bytes,
        )
        # Non-default folded views are computed from perf.data on demand, one at a time
        # per profile (perf script is the expensive part). Weak values: a lock lives
        # while someone holds or waits for it, so evicted profiles leave none behind.
        self._folded_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to sweep beyond what the job store does (``*.part``, dead jobs). The
        Python allocation sampler is found or built in the background (a second of gcc:
        start-up stays fast; a first alloc profile waits for it)."""
        self.sampler.start()

    async def stop(self) -> None:
        """Nothing of its own to stop but the sampler's build: the job store's shutdown
        (run first) asks each recording to stop, so perf gets SIGINT and writes what it
        recorded, and cancels what outlives the grace period (the recorder then stops
        perf); the app's final ``_proc.terminate_all`` reaps anything left."""
        await self.sampler.stop()

    def busy(self) -> bool:
        """A recording profile keeps an idle agent alive."""
        return bool(self.jobs.running(KIND))

    # --- profiles ----------------------------------------------------------------
    def get(self, job_id: str) -> ProfileJob:
        job: ProfileJob = self.jobs.get(KIND, job_id)
        return job

    def profiles(self) -> list[ProfileJob]:
        return self.jobs.of_kind(KIND)

    @staticmethod
    def progress(job: ProfileJob, *, now: float | None = None) -> tuple[float, float | None]:
        """How far a profile is (0..1) and the seconds it has recorded (None before).

        While it records: the elapsed share of its duration, up to 0.95 (the rest is
        post-processing); once finished, the job's own (1 when it succeeded).
        """
        meta = job.result
        duration = meta.plan.duration_s if meta.plan is not None else 0.0
        started, finished = meta.recording_started_at, meta.recording_finished_at
        if started is None:
            return job.progress, None
        elapsed = round((finished or now or time.time()) - started, 2)
        if job.finished or duration <= 0:
            return job.progress, elapsed
        return round(min(elapsed / duration, 1.0) * 0.95, 3), elapsed

    async def capabilities(self) -> dict[str, object]:
        perf = await capabilities.perf()
        permitted = capabilities.perf_permitted()
        out: dict[str, object] = {
            "perf": perf,
            "permitted": permitted,
            "types": {
                "cpu": "perf record",
                "off-cpu": await self._offcpu_check(),
                **await self._memory_check(),
            },
            "profilers": {
                "perf": perf,
                "py-spy": await self._pyspy_check(),
                "jattach": self._jattach_check(),
            },
            "call_graph": ["auto", "fp", "dwarf"],
            "formats": sorted(ARTIFACTS),
            "limits": {
                **asdict(self.limits),
                "max_concurrent_profiles": self.settings.max_concurrent_profiles,
                "max_storage_bytes": self.settings.max_storage_bytes,
            },
        }
        if not perf.get("available"):
            out.update(available=False, reason=perf.get("reason", "perf is not available"))
        elif not permitted.get("available"):
            out.update(available=False, reason=permitted.get("reason", "perf is not permitted"))
        else:
            out.update(available=True, reason="perf is installed and permitted")
        return out

    async def _bpftrace_check(self) -> dict[str, object]:
        tool = await capabilities.tool_version("bpftrace", "--version")
        if not tool.get("available"):
            return {"available": False, "reason": tool.get("reason", "bpftrace is missing")}
        bpf = capabilities.bpf_usable()
        if not bpf.get("available"):
            return {"available": False, "reason": f"BPF is not usable here: {bpf.get('reason')}"}
        return {"available": True, "version": tool.get("version")}

    async def _offcpu_check(self) -> dict[str, object]:
        """Off-CPU profiles need either recorder: perf (DWARF) or bpftrace (frame pointers)."""
        bpf = await self._bpftrace_check()
        why_not_dwarf = await _offcpu_run.dwarf_unavailable()
        fp = (
            {"available": True, "reason": "bpftrace on tracepoint:sched:sched_switch"}
            if bpf.get("available")
            else bpf
        )
        dwarf = (
            {"available": True, "reason": "perf record -e sched:sched_switch --switch-events"}
            if why_not_dwarf is None
            else {"available": False, "reason": why_not_dwarf}
        )
        out: dict[str, object] = {
            "available": bool(fp.get("available") or dwarf.get("available")),
            "call_graph": {"dwarf": dwarf, "fp": fp},
            "bpftrace": bpf.get("version"),
        }
        if not out["available"]:
            out["reason"] = f"neither recorder works: dwarf: {dwarf['reason']}; fp: {fp['reason']}"
        elif why_not_dwarf is not None:
            out["reason"] = (
                f"frame pointers only (bpftrace): {why_not_dwarf}; stacks through libc miss "
                "the app's function that blocked"
            )
        else:
            out["reason"] = "perf with DWARF (frame pointers with bpftrace for Go targets)"
        return out

    async def _memory_check(self) -> dict[str, object]:
        """alloc and leak: bpftrace on the C allocator, and what each runtime shows."""
        bpf = await self._bpftrace_check()
        await self.sampler.ready()
        lib = _asyncprof.library(self.settings.async_profiler_lib)
        no_java = _asyncprof.available(lib)
        java: dict[str, object] = (
            {
                "available": True,
                "reason": "async-profiler's alloc mode, loaded into each JVM through jattach "
                "(HotSpot JDK 11+): " + javalloc.sampling(self.settings.java_alloc_interval_bytes),
                "library": str(lib),
            }
            if no_java is None
            else {"available": False, "reason": no_java}
        )
        out: dict[str, object] = {}
        for kind, what in (
            ("alloc", "where the C allocator is called, by bytes and by allocations"),
            ("leak", "allocations not freed by the end of the window, by bytes"),
        ):
            python = _pymem.capability(kind, interval=self.settings.python_alloc_interval_bytes)
            py_ok = (_pymem.available_alloc() if kind == "alloc" else _pymem.available()) is None
            if bpf.get("available"):
                available, reason = True, f"bpftrace uprobes on malloc and free: {what}"
                if kind == "leak":
                    reason += (
                        "; free is probed past the instructions the kernel would single-step"
                        if await capabilities.bpftrace_offsets()
                        else "; free is probed at its entry (this bpftrace has no offset "
                        "support: glibc's free is single-stepped on every call)"
                    )
            else:
                # No bpftrace (the core image): native code cannot be profiled, CPython
                # processes still can, in Python frames.
                available = py_ok
                reason = f"native code: {bpf.get('reason')}" + (
                    "; CPython processes in Python frames only (python_frames)" if py_ok else ""
                )
            out[kind] = {
                "available": available,
                "reason": reason,
                "runtimes": dict(memplan.RUNTIME_NOTES),
                **({"java_methods": java} if kind == "alloc" else {}),
                **python,
            }
        return out

    def _pyspy(self) -> str | None:
        """The py-spy to run (settings ``py_spy``: auto, a path, or off)."""
        choice = self.settings.py_spy
        if choice == "off":
            return None
        if choice == "auto":
            return _pyspy_record.find()
        return choice if Path(choice).is_file() else None

    async def _pyspy_check(self) -> dict[str, object]:
        exe = self._pyspy()
        if exe is None:
            return {
                "available": False,
                "reason": "py-spy is not installed (pip install py-spy) or is turned off "
                "(setting py_spy): Python processes are profiled with perf, which sees only "
                "the innermost Python function",
            }
        version = await capabilities.tool_version(exe, "--version")
        return {
            "available": True,
            "version": version.get("version"),
            "reason": "whole Python stacks for CPython 2.3-3.14 processes (profiler auto)",
        }

    def _jattach_check(self) -> dict[str, object]:
        if _proc.which("jattach") is None:
            return {
                "available": False,
                "reason": "jattach is not installed: JIT-compiled Java methods resolve only "
                "if the JVM writes its own perf map",
            }
        return {
            "available": True,
            "reason": "asks each profiled JVM for its perf map (jcmd Compiler.perfmap, JDK >= 17)",
        }

    async def require_tool(self, kind: str) -> None:
        if kind in memplan.MEMORY_TYPES:
            # What a memory profile runs depends on its targets: bpftrace for the C
            # allocator, nothing of ours for Python frames (the core image has no
            # bpftrace), async-profiler for JVMs. The plan says; create() asks then.
            return
        if kind != "off-cpu":
            await self.require_perf()
            return
        check = await self._offcpu_check()
        if not check.get("available"):
            raise Unavailable(
                f"off-CPU profiling is unavailable: {check.get('reason')}; see GET /capabilities"
            )

    async def _require_bpftrace(self, kind: str) -> None:
        check = await self._bpftrace_check()
        if check.get("available"):
            return
        if kind in memplan.MEMORY_TYPES:
            raise Unavailable(
                f"{kind} profiles of native code need bpftrace (uprobes on the C allocator): "
                f"{check.get('reason')}; CPython targets are profiled in Python frames "
                "without it (python_frames); see GET /capabilities"
            )
        raise Unavailable(
            f"off-CPU profiling by frame pointers needs bpftrace: {check.get('reason')}; "
            "call_graph dwarf records with perf instead (see GET /capabilities)"
        )

    async def require_perf(self) -> None:
        perf = await capabilities.perf()
        if not perf.get("available"):
            raise Unavailable(
                f"CPU profiling is unavailable: {perf.get('reason')}; see GET /capabilities"
            )
        permitted = capabilities.perf_permitted()
        if not permitted.get("available"):
            raise Unavailable(
                f"perf is not permitted here: {permitted.get('reason')}; see GET /capabilities"
            )

    # --- planning ----------------------------------------------------------------
    def _targets(self, req: ProfileRequest) -> tuple[list[procfs.ProcessInfo], str]:
        given = [x for x in (req.pid, req.pids, req.container) if x is not None]
        if len(given) > 1:
            raise Invalid(
                "give at most one of pid, pids, container (none of them = the whole pod)",
                field="pid",
            )
        if req.pid is not None:
            info = traceable(procfs.process_info(req.pid))
            return [info], f"pid {info.pid} ({info.comm}) in container {info.container}"
        if req.pids is not None:
            infos = [traceable(procfs.process_info(p)) for p in sorted(set(req.pids))]
            return infos, "pids " + ", ".join(str(i.pid) for i in infos)
        own = procfs.own_tree()
        # Zombies and processes we may not inspect (mnt_ns 0: a live process whose
        # namespaces are closed to us) are left out: perf cannot attach to them and
        # would refuse the whole list.
        procs = procfs.list_processes()
        live = [p for p in procs if p.pid not in own and p.state != "Z" and p.mnt_ns != 0]
        if req.container is not None:
            # 404 naming the containers there are
            procfs.pids_of_container(req.container, procs=procs)
            infos = [p for p in live if p.container == req.container]
            return infos, f"container {req.container} ({len(infos)} processes)"
        return live, f"the whole pod ({len(live)} processes, the agent excluded)"

    async def _gather(self, req: ProfileRequest) -> tuple[list[TargetFacts], str]:
        infos, target = await asyncio.to_thread(self._targets, req)
        facts = await asyncio.to_thread(lambda: [target_facts(i) for i in infos])
        return facts, target

    async def _offcpu_facts(
        self, req: ProfileRequest, facts: list[TargetFacts]
    ) -> tuple[list[TargetFacts], str | None]:
        """off-cpu: the targets' switch rates (the DWARF cost bound) and why perf cannot
        record here (None: it can). Nothing to measure for cpu profiles or fp."""
        if req.type != "off-cpu" or req.call_graph == "fp":
            return facts, None
        if req.call_graph == "auto" and all(f.runtime == "go" for f in facts):
            return facts, None  # all frame pointers: perf has nothing to record
        why_not = await _offcpu_run.dwarf_unavailable()
        if why_not is not None:
            return facts, why_not
        rates = await _offcpu_run.switch_rates([f.pid for f in facts])
        return [replace(f, switches_per_s=rates.get(f.pid)) for f in facts], None

    async def _memory_facts(
        self, req: ProfileRequest, facts: list[TargetFacts]
    ) -> list[memplan.MemoryTargetFacts] | None:
        """alloc/leak: each target's allocator (read from its files); None otherwise."""
        if req.type not in memplan.MEMORY_TYPES:
            return None
        if req.type == "alloc":
            await self.sampler.ready()
        return await asyncio.to_thread(
            lambda: [_pymem.with_python(_alloc.find_allocator(f), f, req.type) for f in facts]
        )

    @staticmethod
    async def _offsets(req: ProfileRequest) -> bool:
        """leak: whether bpftrace can probe free past its entry (asked once, cached)."""
        return req.type == "leak" and await capabilities.bpftrace_offsets()

    async def plan(self, req: ProfileRequest, *, output: Path) -> Plan:
        return (await self._planner(req))(output)

    async def _planner(self, req: ProfileRequest) -> Callable[[Path], Plan]:
        """What ``req``'s plan needs, read from the pod once; planning itself is pure and
        cheap, so the returned function plans for any output path."""
        facts, target = await self._gather(req)
        facts, why_not = await self._offcpu_facts(req, facts)
        mem = await self._memory_facts(req, facts)
        offsets = await self._offsets(req)

        def planned(output: Path) -> Plan:
            return self._plan(
                req,
                facts,
                target,
                output=output,
                dwarf_unavailable=why_not,
                memory_targets=mem,
                bpftrace_offsets=offsets,
            )

        return planned

    def _plan(
        self,
        req: ProfileRequest,
        facts: list[TargetFacts],
        target: str,
        *,
        output: Path,
        dwarf_unavailable: str | None = None,
        memory_targets: list[memplan.MemoryTargetFacts] | None = None,
        bpftrace_offsets: bool = False,
    ) -> Plan:
        p = plan(
            req,
            targets=facts,
            target=target,
            limits=self.limits,
            output=output,
            pid_ns=procfs.own_pid_ns() if req.type != "cpu" else 0,
            memory_targets=memory_targets,
            pyspy=self._pyspy(),
            jattach=_proc.which("jattach") is not None,
            offcpu_dwarf_unavailable=dwarf_unavailable,
            bpftrace_offsets=bpftrace_offsets,
        )
        if p.memory is not None:  # alloc: the Java targets' methods, by async-profiler
            lib = _asyncprof.library(self.settings.async_profiler_lib)
            p.memory = _asyncprof.describe(
                p.memory,
                lib=lib,
                why_not=_asyncprof.available(lib),
                interval=self.settings.java_alloc_interval_bytes,
            )
        return p

    # --- jobs --------------------------------------------------------------------
    async def create(self, req: ProfileRequest, *, dry_run: bool = False) -> Plan | ProfileJob:
        if dry_run:
            return await self.plan(req, output=self.jobs.data_dir / KIND / "ID" / PERF_DATA)
        await self.require_tool(req.type)
        planned = await self._planner(req)
        # Plan (validate) before creating the job, so a bad request leaves nothing behind;
        # then again with the job's own output path.
        first = planned(Path(PERF_DATA))
        if first.bpftrace_argv:
            await self._require_bpftrace(req.type)
        job = self.jobs.create(
            KIND,
            req.model_dump(exclude_none=True),
            result=ProfileResult(),
            max_running=self.settings.max_concurrent_profiles,
        )
        output = job.artifact(PERF_DATA).with_name(PERF_DATA + ".part")  # atomic_path's name
        the_plan = planned(output)
        job.result.plan = the_plan
        self.jobs.save(job)
        self.jobs.start(job, lambda j: self._run_counted(j, the_plan))
        self.metrics.profiles.started.inc()
        return job

    async def _run_counted(self, job: ProfileJob, the_plan: Plan) -> None:
        # What the job store turns into a failed state is what is counted as failed.
        try:
            await self._run(job, the_plan)
        except Exception:
            self.metrics.profiles.failed.inc()
            raise

    async def _run(self, job: ProfileJob, the_plan: Plan) -> None:
        meta = job.result
        meta.phase = "recording"
        meta.recording_started_at = time.time()
        self.jobs.save(job)
        if the_plan.type == "off-cpu":
            await self._run_offcpu(job, the_plan)
            return
        if the_plan.memory is not None:
            comms = {t.pid: t.comm for t in the_plan.memory.targets}
            await _alloc.run(job, the_plan, save=self.jobs.save, comms=comms)
            return
        # Perf maps are copied before and after recording: a target that exits takes
        # its /tmp (and its map) with it, and JITs add entries while they run.
        await asyncio.to_thread(self._collect_perf_maps, job, the_plan)
        perf_task = asyncio.ensure_future(self._record_perf(job, the_plan))
        spy_task = asyncio.ensure_future(
            _pyspy_record.record_all(the_plan, stop=job.stop_requested)
        )
        try:
            rec = await perf_task
        except BaseException:
            spy_task.cancel()  # py-spy's runs are stopped and reaped on cancellation
            with contextlib.suppress(BaseException):
                await spy_task
            raise
        spies = await spy_task
        meta.recording_finished_at = time.time()
        self._note_recording(job, the_plan, rec, spies)
        if rec is None and not any(s.ok for s in spies):
            # py-spy recorded everything, and every run of it failed: nothing to show.
            raise _proc.ToolFailed(
                "py-spy could not profile "
                + "; ".join(f"pid {s.pid}: {s.message[:300]}" for s in spies),
                argv=the_plan.py_spy[0].argv,
                returncode=1,
                stderr="",
            )
        meta.phase = "post-processing"
        self.jobs.save(job)
        await self._ask_jvms_for_perf_maps(job, the_plan)
        maps = await asyncio.to_thread(self._collect_perf_maps, job, the_plan)
        stacks = await self._cpu_folded(
            job,
            CollapseOptions(),
            perf_maps=maps,
            with_perf=bool(the_plan.argv),
            runs=the_plan.py_spy,
        )
        write_atomic(job.artifact(FOLDED), format_folded(stacks))
        await asyncio.to_thread(self._render_all, job, the_plan, stacks)
        meta.folded_samples = sum(stacks.values())
        meta.unresolved = self._unresolved(the_plan, stacks, maps, meta.exited_pids)
        meta.phase = "done"
        meta.artifacts = sorted(p.name for p in job.dir.iterdir() if p.name != "job.json")
        if job.stop_requested.is_set():
            job.message = "stopped early on request; what was recorded is kept"

    async def _record_perf(self, job: ProfileJob, the_plan: Plan) -> Recording | None:
        if not the_plan.argv:
            return None
        with atomic_path(job.artifact(PERF_DATA)) as part:
            assert str(part) in the_plan.argv  # the planned output is atomic_path's temp
            return await record(the_plan, output=part, stop=job.stop_requested)

    async def _ask_jvms_for_perf_maps(self, job: ProfileJob, the_plan: Plan) -> None:
        """Have each profiled JVM write its perf map now, while it lives (jattach enters
        its namespaces and asks for ``Compiler.perfmap``: /tmp/perf-PID.map in its /tmp)."""
        jvms = [t.pid for t in job.result.targets if t.runtime == "java"]
        if not jvms or _proc.which("jattach") is None:
            return
        done: dict[str, str] = {}
        for pid in jvms:
            try:
                res = await _proc.run(
                    ["jattach", str(pid), "jcmd", "Compiler.perfmap"], timeout=15, check=False
                )
                said = (res.text.strip() or res.err.strip())[-300:]
                done[str(pid)] = "written" if res.returncode == 0 else f"failed: {said}"
            except _proc.ProcError as e:
                done[str(pid)] = f"failed: {e}"
        job.result.jvm_perf_maps = done
        for jvm, what in done.items():
            if what != "written":
                job.result.notes.append(
                    f"the JVM {jvm} did not write its perf map ({what[:300]}): its JIT-compiled "
                    "methods show as [perf-PID.map] or [unknown]"
                )

    async def _cpu_folded(
        self,
        job: ProfileJob,
        options: CollapseOptions,
        *,
        perf_maps: list[int],
        with_perf: bool,
        runs: list[PySpyRun],
    ) -> dict[str, int]:
        """perf's stacks and py-spy's, in one folded dict."""
        stacks: dict[str, int] = {}
        if with_perf:
            stacks = await self._folded(job, options, perf_maps=perf_maps)
        for run in runs:
            path = job.artifact(f"py-spy-{run.pid}.txt")
            try:
                raw = await asyncio.to_thread(path.read_text, "utf-8", "replace")
            except OSError:
                continue  # py-spy failed for it: said in the notes
            part = pyspy.fold(
                raw,
                comm=run.comm,
                pid=run.pid,
                with_pid=options.pid or options.tid,
                with_tid=options.tid,
            )
            for k, v in part.items():
                stacks[k] = stacks.get(k, 0) + v
        return stacks

    async def _run_offcpu(self, job: ProfileJob, the_plan: Plan) -> None:
        """bpftrace (frame-pointer targets) and perf (DWARF targets) side by side, merged."""
        meta = job.result
        # The CPU profiles' symbolizer; the targets' objects opened while they live, as
        # the recording starts (not before it: a short-lived target must not be missed).
        symbolizer = symbolize.Symbolizer(debuginfod=symbolize.debuginfod_cache(self.settings))
        fp_task = asyncio.ensure_future(self._record_offcpu_fp(job, the_plan, symbolizer))
        perf_task = asyncio.ensure_future(self._record_perf(job, the_plan))
        prepared = asyncio.ensure_future(asyncio.to_thread(symbolizer.prepare, the_plan.pids))
        try:
            fp_rec, perf_rec = await asyncio.gather(fp_task, perf_task)
            await prepared
        except BaseException:
            with contextlib.suppress(BaseException):
                await prepared  # a thread: it ends by itself, soon
            # One failed, or we are cancelled: the other recorder must not outlive us
            # (cancelling it stops and reaps its tool; atomic_path drops its .part).
            for t in (fp_task, perf_task):
                t.cancel()
            for t in (fp_task, perf_task):
                with contextlib.suppress(BaseException):
                    await t
            raise
        meta.recording_finished_at = time.time()
        meta.phase = "post-processing"
        self.jobs.save(job)
        stacks: dict[str, int] = dict(fp_rec.stacks) if fp_rec is not None else {}
        stats: TimedStats | None = None
        maps: list[int] = []
        if perf_rec is not None:
            # Symbols are read while the targets live; JIT maps copied as for CPU profiles.
            maps = await asyncio.to_thread(self._collect_perf_maps, job, the_plan)
            timeout = self.settings.perf_timeout_slack_s + the_plan.duration_s
            with perf_maps_in_tmp(job, maps):
                perf_stacks, stats = await _offcpu_run.fold_perf(
                    job.artifact(PERF_DATA),
                    period=the_plan.dwarf_period,
                    timeout=timeout,
                    symbolizer=symbolizer,
                )
            for k, v in perf_stacks.items():
                stacks[k] = stacks.get(k, 0) + v
        stopped_early = any(r is not None and r.stopped_early for r in (fp_rec, perf_rec))
        weight = fp_rec.sampling_weight if fp_rec is not None else 1
        meta.off_cpu_us = sum(stacks.values())
        meta.stopped_early = stopped_early
        meta.bpftrace_warnings = fp_rec.warnings if fp_rec is not None else []
        meta.perf_warnings = perf_rec.warnings if perf_rec is not None else []
        meta.sampling_weight = max(weight, the_plan.dwarf_period if perf_rec else 1)
        meta.unwinding = list(the_plan.unwinding)
        if stats is not None:
            meta.dwarf = DwarfStats(**asdict(stats), period=the_plan.dwarf_period)
        self._note_targets(job, the_plan)
        notes = meta.notes
        report = symbolizer.report()
        meta.symbols = report
        meta.leaf_callers_recovered = symbolizer.leaf_fixes
        notes.extend(symbolize.note_lines(report))
        if not stacks:
            notes.append("no off-CPU time: the targets never left the CPU while recording")
        if weight > 1:
            notes.append(
                f"the frame-pointer targets left the CPU more than "
                f"{self.limits.offcpu_max_stacks_per_s} times a second: at busiest one switch "
                f"in {weight} was recorded, weighted to match (the cost bound)"
            )
        for c in the_plan.unwinding:
            if c.fallback:
                notes.append(f"pid {c.pid}: {c.reason}")
        if perf_rec is not None:
            notes.extend(_dwarf_notes(perf_rec, stats, the_plan.dwarf_period))
        self.jobs.save(job)
        write_atomic(job.artifact(FOLDED), format_folded(stacks))
        await asyncio.to_thread(self._render_all, job, the_plan, stacks)
        meta.folded_samples = len(stacks)
        meta.unresolved = self._unresolved(the_plan, stacks, maps, meta.exited_pids)
        meta.phase = "done"
        meta.artifacts = sorted(p.name for p in job.dir.iterdir() if p.name != "job.json")
        if stopped_early:
            job.message = "stopped early on request; what was recorded is kept"

    async def _record_offcpu_fp(
        self, job: ProfileJob, the_plan: Plan, symbolizer: symbolize.Symbolizer
    ) -> _offcpu_run.OffCpuRecording | None:
        if not the_plan.bpftrace_argv:
            return None
        return await _offcpu_run.record(
            the_plan,
            output=job.artifact(BPFTRACE_OUT),
            stop=job.stop_requested,
            symbolizer=symbolizer,
        )

    def _note_recording(
        self, job: ProfileJob, the_plan: Plan, rec: Recording | None, spies: list[PySpyResult]
    ) -> None:
        meta = job.result
        perf_samples = rec.samples or 0 if rec is not None else 0
        spy_samples = sum(s.samples for s in spies)
        meta.samples = perf_samples + spy_samples
        meta.lost_samples = rec.lost if rec is not None else 0
        meta.dropped_samples = sum(s.errors for s in spies)
        if rec is not None:
            self.metrics.drop("perf_lost", rec.lost)
        meta.stopped_early = job.stop_requested.is_set()
        meta.perf_warnings = rec.warnings if rec is not None else []
        meta.py_spy = [
            PySpyOutcome(
                pid=s.pid,
                ok=s.ok,
                samples=s.samples,
                errors=s.errors,
                exited=s.exited,
                message=s.message or None,
            )
            for s in spies
        ]
        self._note_targets(job, the_plan)
        notes = meta.notes
        if rec is not None and rec.lost:
            notes.append(f"perf lost {rec.lost} chunk(s) of samples (the system was too busy)")
        if rec is not None and rec.restarts:
            notes.append(restart_note(rec))
        for s in spies:
            if not s.ok:
                notes.append(f"py-spy could not profile pid {s.pid}: {s.message[:500]}")
            elif s.errors:
                notes.append(
                    f"py-spy dropped {s.errors} of {s.samples + s.errors} samples of pid "
                    f"{s.pid} (the interpreter could not be read at that instant)"
                )
        if meta.samples == 0:
            notes.append(
                "no samples: the targets used no CPU while recording (idle, or blocked); "
                "profile while they are busy, or longer"
            )

    def _note_targets(self, job: ProfileJob, the_plan: Plan) -> None:
        """Which targets exited, and what each target was (notes start here)."""
        meta = job.result
        exited = [p for p in the_plan.pids if not procfs.running(p)]
        meta.exited_pids = exited
        notes: list[str] = []
        if exited:
            notes.append(
                f"pid(s) {', '.join(map(str, exited))} exited during the recording; "
                "their samples up to then are kept"
            )
        meta.notes = notes
        targets: list[TargetSeen] = []
        for pid in the_plan.pids:
            try:
                info = procfs.process_info(pid)
            except NotFound:
                targets.append(TargetSeen(pid=pid, exited=True))
                continue
            targets.append(
                TargetSeen(
                    pid=pid,
                    comm=info.comm,
                    container=info.container,
                    runtime=info.runtime,
                    runtime_version=info.runtime_version,
                    perf_map=info.perf_map,
                    exe=info.exe,
                )
            )
        meta.targets = targets

    def _collect_perf_maps(self, job: ProfileJob, the_plan: Plan) -> list[int]:
        """Copy each target's JIT perf map from its own /tmp into the job directory.

        perf script looks for /tmp/perf-PID.map in the target's mount namespace
        only while the process lives; the copy keeps a profile resolvable after
        the process exits (and is handed to perf script then, see ``_folded``).
        """
        for pid in the_plan.pids:
            with contextlib.suppress(OSError):
                with procfs.open_perf_map(pid) as src:
                    data = src.read(PERF_MAP_MAX_BYTES + 1)
                if len(data) > PERF_MAP_MAX_BYTES:
                    data = data[: data.rfind(b"\n", 0, PERF_MAP_MAX_BYTES) + 1]
                write_atomic(job.artifact(f"perf-{pid}.map"), data)
        return map_pids(job)

    async def _folded(
        self, job: ProfileJob, options: CollapseOptions, *, perf_maps: list[int]
    ) -> dict[str, int]:
        from agent.profiling.perf_script import perf_data_to_folded

        # perf script's time grows with the recording (DWARF unwinding above all).
        the_plan = job.result.plan
        duration = the_plan.duration_s if the_plan is not None else 0.0
        timeout = self.settings.perf_timeout_slack_s + duration
        pids = list(the_plan.pids) if the_plan is not None else []
        symbolizer = await asyncio.to_thread(symbolize.for_profile, self.settings, pids)
        with perf_maps_in_tmp(job, perf_maps):
            stacks = await perf_data_to_folded(
                job.artifact(PERF_DATA), options=options, timeout=timeout, symbolizer=symbolizer
            )
        if options == CollapseOptions():
            # Where each object's names came from (the default view's run says it once).
            report = symbolizer.report()
            job.result.symbols = report
            job.result.leaf_callers_recovered = symbolizer.leaf_fixes
            job.result.notes.extend(symbolize.note_lines(report))
        return stacks

    def _render_all(self, job: ProfileJob, the_plan: Plan, stacks: dict[str, int]) -> None:
        """Every output but the folded file, titled by :func:`outputs.profile_info`.
        Blocking: called in a worker thread."""
        meta = job.result
        started = meta.recording_started_at or job.created_at
        finished = meta.recording_finished_at or time.time()
        info = outputs.profile_info(
            kind=the_plan.type,
            target=the_plan.target,
            where=self.settings.pod_name or "this pod",
            started_at=started,
            duration_s=max(finished - started, 0.0),
            frequency_hz=the_plan.frequency_hz,
            call_graph=the_plan.call_graph,
            stacks=stacks,
        )
        outputs.write_outputs(job, stacks, info, pids=the_plan.pids)

    def _unresolved(
        self, the_plan: Plan, stacks: dict[str, int], maps: list[int], exited: list[int]
    ) -> Unresolved:
        """Samples with unresolved frames, by object, and the reasons known for them.

        The collapser writes an unresolved frame as ``[OBJECT]`` (the DSO's base
        name, or ``[unknown]`` when perf did not know the mapping either).
        """
        total = sum(stacks.values()) or 1
        with_unresolved = 0
        by_object: dict[str, int] = {}
        for stack, n in stacks.items():
            objects = {f for f in stack.split(";")[1:] if _UNRESOLVED.fullmatch(f)}
            if objects:
                with_unresolved += n
                for obj in objects:
                    by_object[obj] = by_object.get(obj, 0) + n
        reasons = [r for r in the_plan.unresolved if not any(f"perf-{p}.map" in r for p in maps)]
        if exited and not maps and with_unresolved:
            reasons.append(
                "some targets exited before their perf map (if any) could be copied: "
                "their JIT frames cannot be resolved"
            )
        top = sorted(by_object.items(), key=lambda kv: -kv[1])[:20]
        return Unresolved(
            samples_with_unresolved_frames=with_unresolved,
            fraction=round(with_unresolved / total, 4),
            by_object=dict(top),
            reasons=reasons,
            perf_maps_used=[f"/tmp/perf-{p}.map" for p in maps],
        )

    async def folded(self, job: ProfileJob, options: CollapseOptions) -> Path:
        """The file of folded stacks of a finished profile with ``options``.

        The default options' file is written when the profile finishes; any other
        combination is computed from perf.data on first request and kept.
        """
        self.require_finished(job)
        if options == CollapseOptions():
            return job.artifact(FOLDED)
        if profile_type(job) in memplan.MEMORY_TYPES:
            raise Conflict(
                f"profile {job.id} is {profile_type(job)}: its stacks are folded once, by bytes "
                "(and by allocations: weight=count); the collapse options apply to cpu profiles"
            )
        if profile_type(job) == "off-cpu":
            raise Conflict(
                f"profile {job.id} is off-cpu: its stacks are folded once, without the "
                "collapse options (pid, tid, kernel, jit, all, addrs), which apply to cpu "
                "profiles"
            )
        key = "".join(f"{k}{int(v)}" for k, v in sorted(asdict(options).items()))
        cached = job.artifact(f"folded-{key}.txt")
        lock = self._folded_locks.setdefault(job.id, asyncio.Lock())
        # Profiles made before py-spy came have no py_spy runs in their plan.
        the_plan = job.result.plan
        runs = the_plan.py_spy if the_plan is not None else []
        with_perf = bool(the_plan.argv) if the_plan is not None else True
        async with lock:
            if not await asyncio.to_thread(cached.exists):
                stacks = await self._cpu_folded(
                    job, options, perf_maps=map_pids(job), with_perf=with_perf, runs=runs
                )
                await asyncio.to_thread(write_atomic, cached, format_folded(stacks))
        return cached

    def require_finished(self, job: ProfileJob, name: str | None = None) -> Path | None:
        if job.state != "succeeded":
            what = f"its {name}" if name else "its outputs"
            detail = f"profile {job.id} is {job.state}"
            if job.error:
                detail += f" ({job.error})"
            raise Conflict(f"{detail}: {what} exist only once it has succeeded")
        if name is None:
            return None
        path = job.artifact(name)
        if not path.exists():
            raise NotFound(f"profile {job.id} has no {name}")
        return path

    def require_perf_data(self, job: ProfileJob) -> None:
        """409 for a profile that has no perf.data because py-spy recorded all of it (404
        for an off-CPU profile that bpftrace recorded alone)."""
        argv = job.result.plan.argv if job.result.plan is not None else ["perf"]
        if profile_type(job) == "off-cpu" and not (argv and argv[0] == "perf"):
            raise NotFound(
                f"profile {job.id} has no perf.data: bpftrace recorded it (frame pointers); "
                "its raw record is bpftrace.json"
            )
        if job.state == "succeeded" and not argv:
            raise Conflict(
                f"profile {job.id} has no perf.data: py-spy recorded all its targets "
                "(Python); its stacks are in folded, flamegraph.svg, speedscope.json and "
                "profile.pb.gz"
            )

    async def wait(self, job: ProfileJob) -> None:
        if job.task is not None:
            await asyncio.shield(job.task)

    async def stop_or_delete(self, job: ProfileJob, *, discard: bool) -> bool:
        """DELETE: stop a running profile (keeping it) or remove it. True if removed."""
        if not job.finished and not discard:
            job.stop_requested.set()
            return False
        await self.jobs.delete(job)
        self._folded_locks.pop(job.id, None)
        return True


def _dwarf_notes(rec: Recording, stats: TimedStats | None, period: int) -> list[str]:
    """What the DWARF recorder lost or weighted, in words (never silent)."""
    notes: list[str] = []
    if rec.lost:
        notes.append(
            f"perf lost {rec.lost} chunk(s) of off-CPU records (the system was too busy): "
            "the switches in them are missing, and a lost switch-in makes the next one count"
        )
    if rec.restarts:
        notes.append(restart_note(rec))
    if period > 1:
        notes.append(
            f"one switch-out in {period} got a stack (perf's sampling period, from the "
            f"targets' switch rate and the cost bound), weighted {period} times"
        )
    if stats is None:
        return notes
    if stats.unmatched:
        notes.append(
            f"{stats.unmatched} of {stats.stacks} switch-outs had no switch-in record before the "
            "thread's next switch-out (lost): not counted"
        )
    if stats.cut_short:
        notes.append(
            f"{stats.cut_short} of {stats.stacks} stacks stop before the thread's first frame "
            f"(_start, start_thread, clone): the {offcpu_fold.DWARF_STACK_BYTES}-byte user stack "
            "copy did not reach it, or a frame has no unwind information (JIT code); their "
            "outer frames are missing"
        )
    return notes
