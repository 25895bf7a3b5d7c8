"""The command line, as kubectl spells it: global flags (``-n``, ``--context``,
``--kubeconfig``) accepted before or after the command, ``TARGET`` as ``POD``,
``pod/NAME`` or ``deploy/NAME``, ``-l SELECTOR``, ``-o json`` for scripts. Pure:
parsing touches nothing."""

from __future__ import annotations

import argparse

from kubectl_tracecar._attach import DEFAULT_IDLE_S
from kubectl_tracecar._targets import parse_duration, parse_target
from kubectl_tracecar.errors import UsageError

PROG = "kubectl tracecar"
# The commands that act on pods: each takes TARGET (and all but attach take -l).
POD_COMMANDS = frozenset(
    {
        "status",
        "ps",
        "profile",
        "stack",
        "probe",
        "trace",
        "attach",
        "dump",
        "counters",
        "recorder",
        "memory",
        "heapdump",
    }
)

_EXAMPLES = {
    "status": (
        "kubectl tracecar status pod/web-7d9f-abcde   # the agent, what works, each store's state\n"
        "  kubectl tracecar status -l app=web -o json"
    ),
    "ps": "kubectl tracecar ps deploy/web\n  kubectl tracecar ps web-7d9f-abcde -c app -o json",
    "profile": (
        "kubectl tracecar profile web-7d9f-abcde -d 30s -o flame.svg\n"
        "  kubectl tracecar profile deploy/web --all-pods -o flame.svg   # merged + one per pod\n"
        "  kubectl tracecar profile -l app=web -c app -o web.folded\n"
        "  kubectl tracecar profile deploy/web --all-pods --push -o flame.svg  # and to Pyroscope"
    ),
    "stack": (
        "kubectl tracecar stack web-7d9f-abcde            # every thread of the main process\n"
        "  kubectl tracecar stack web-7d9f-abcde --process gunicorn -o json\n"
        "  kubectl tracecar stack web-7d9f-abcde --pid 7 --native"
    ),
    "probe": (
        "kubectl tracecar probe web-7d9f-abcde --function add3 --args int,int,int --retval\n"
        "  kubectl tracecar probe web-7d9f-abcde --binary libc --function malloc \\\n"
        "      --histogram arg0 -d 10s\n"
        "  kubectl tracecar probe web-7d9f-abcde --python-function handle --histogram latency"
    ),
    "trace": (
        "kubectl tracecar trace web-7d9f-abcde --python 'app*' -d 10s -o trace.tar.gz\n"
        "  kubectl tracecar trace web-7d9f-abcde --ust 'myprov:*' --events"
    ),
    "diff": (
        "kubectl tracecar profile web-7d9f-abcde -o a.folded   # two pods, or before/after\n"
        "  kubectl tracecar profile web-7d9f-fghij -o b.folded\n"
        "  kubectl tracecar diff a.folded b.folded -o diff.svg    # red: more in b, blue: less\n"
        "  kubectl tracecar diff before.folded after.folded -o diff.folded --raw"
    ),
    "dump": (
        "kubectl tracecar dump web-7d9f-abcde --pid 7 -o core.dmp      # .NET: createdump\n"
        "  kubectl tracecar dump web-7d9f-abcde --pid 7 --type full     # others: gdb gcore"
    ),
    "counters": "kubectl tracecar counters web-7d9f-abcde --pid 7       # Ctrl-C ends it",
    "memory": (
        "kubectl tracecar memory web-7d9f-abcde              # every process: RSS, PSS, anon...\n"
        "  kubectl tracecar memory web-7d9f-abcde --pid 7    # one: mappings, JVM heap, pymalloc\n"
        "  kubectl tracecar memory -l app=web -o json"
    ),
    "heapdump": (
        "kubectl tracecar heapdump web-7d9f-abcde --pid 7 -o heap.hprof   # Java: the JVM's\n"
        "  kubectl tracecar heapdump web-7d9f-abcde --pid 9 -o core.9       # others: gcore"
    ),
    "recorder": (
        "kubectl tracecar recorder web-7d9f-abcde start              # the pod, 19 Hz, 10 min\n"
        "  kubectl tracecar recorder web-7d9f-abcde start -c app --retain 30m\n"
        "  kubectl tracecar recorder web-7d9f-abcde --last 5m -o flame.svg\n"
        "  kubectl tracecar recorder web-7d9f-abcde --from 2026-12-06T10:02:00Z \\\n"
        "      --to 2026-12-06T10:05:00Z -o spike.folded\n"
        "  kubectl tracecar recorder web-7d9f-abcde status      # window, lag, Python processes\n"
        "  kubectl tracecar recorder web-7d9f-abcde stop"
    ),
    "attach": (
        "kubectl tracecar attach web-7d9f-abcde            # the agent joins the app, no restart\n"
        "  kubectl tracecar attach web-7d9f-abcde -c app --idle-timeout 1h"
    ),
}


def _globals(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Sub-parsers default to SUPPRESS so a flag given before the command is not reset.
    d = None if top else argparse.SUPPRESS
    g = parser.add_argument_group("kubectl flags")
    g.add_argument("-n", "--namespace", default=d, help="the namespace (default: the context's)")
    g.add_argument("--context", default=d, help="the kubeconfig context to use")
    g.add_argument("--kubeconfig", default=d, help="path to the kubeconfig file")
    g.add_argument("--as", dest="as_user", default=d, metavar="USER", help="impersonate USER")


def _target(p: argparse.ArgumentParser, *, selector: bool = True) -> None:
    p.add_argument("target", nargs="?", metavar="TARGET", help="POD, pod/NAME or deploy/NAME")
    if selector:
        p.add_argument("-l", "--selector", help="label selector: every matching running pod")


def _sub(
    subs: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    p = subs.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {_EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _globals(p, top=False)
    return p


def _json_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["json"], help="json: machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Profile, probe and trace live pods with tracecar's agent.",
        epilog=(
            "exit codes: 0 ok, 1 failed, 2 usage, 3 not found, 4 forbidden, 5 no agent, "
            "6 unsupported (see docs/plugin.md)"
        ),
    )
    _globals(parser, top=True)
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(
        subs,
        "status",
        "is a tracecar agent in the pod (injected, attached, none), what works, and the "
        "state of each store it sends to (Pyroscope, S3)",
    )
    _target(p)
    _json_output(p)

    p = _sub(subs, "ps", "the pod's processes, by container")
    _target(p)
    p.add_argument("-c", "--container", help="only this container's processes")
    _json_output(p)

    p = _sub(subs, "profile", "record a CPU profile; write a flame graph or another format")
    _target(p)
    p.add_argument("-c", "--container", help="profile this container only (default: every app)")
    p.add_argument("--pid", type=int, help="profile this process only")
    p.add_argument("--process", help="profile the processes of this name (comm or argv[0])")
    p.add_argument("-d", "--duration", default="30s", help="how long to record (default 30s)")
    p.add_argument("-F", "--frequency", type=int, help="samples per second (default 99)")
    p.add_argument(
        "--type",
        choices=["cpu", "off-cpu"],
        default="cpu",
        help="cpu: time on CPU; off-cpu: time blocked or waiting, weighted by that time",
    )
    p.add_argument(
        "--profiler",
        choices=["auto", "perf", "py-spy"],
        default="auto",
        help="auto: py-spy for Python processes (whole Python stacks), perf for the rest",
    )
    p.add_argument(
        "--python-native",
        action="store_true",
        help="py-spy: native frames under the Python ones (pauses the process per sample)",
    )
    p.add_argument(
        "-o",
        "--output-file",
        default="flame.svg",
        metavar="FILE",
        help="flame.svg, x.folded, x.speedscope.json, x.pb.gz or perf.data (by extension)",
    )
    p.add_argument("--all-pods", action="store_true", help="with deploy/NAME: every pod, merged")
    p.add_argument("--by-pod", action="store_true", help="merged graph: a root frame per pod")
    p.add_argument("--parallel", type=int, default=4, help="pods profiled at once (default 4)")
    p.add_argument(
        "--push",
        action="store_true",
        help="also send each pod's profile to the profile store its agent is configured "
        "with (Pyroscope; labelled source=on-demand), where a query merges the pods",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--open", action="store_true", help="open the file when it is written")

    p = _sub(subs, "stack", "what is it doing right now: every thread's stack, once")
    _target(p)
    p.add_argument("-c", "--container", help="the app container (default: the pod's default)")
    p.add_argument("--pid", type=int, help="this process (default: the container's main one)")
    p.add_argument("--process", help="the processes of this name (comm or argv[0])")
    p.add_argument(
        "--runtime",
        choices=["auto", "python", "java", "native"],
        default="auto",
        help="auto: Python/Java frames for those runtimes, native otherwise",
    )
    p.add_argument("--native", action="store_true", help="Python: C frames mixed in")
    p.add_argument("-o", "--output", choices=["json"], help="json: machine-readable output")

    p = _sub(subs, "probe", "attach a uprobe or USDT probe (or a Python function); print each call")
    _target(p)
    point = p.add_mutually_exclusive_group(required=True)
    point.add_argument("--function", help="symbol, symbol+0xOFF or 0xADDRESS")
    point.add_argument("--usdt", metavar="PROVIDER:NAME", help="a USDT probe (bpftrace)")
    point.add_argument(
        "--python-function", metavar="NAME", help="a Python function (CPython's USDT probes)"
    )
    p.add_argument("--python-file", metavar="PART", help="with --python-function: its file")
    p.add_argument("--binary", help="path as the app sees it, or a library name (libc)")
    p.add_argument("-c", "--container", help="the app container (default: the pod's default)")
    p.add_argument("--pid", type=int, help="the process (default: the container's main one)")
    p.add_argument("--args", help="argument types, comma-separated: int,uint,str,ptr...")
    p.add_argument("--retval", action="store_true", help="capture the return value")
    p.add_argument(
        "--histogram", metavar="OF", help="latency, retval or argN: a histogram at the end"
    )
    p.add_argument("--count", action="store_true", help="count calls only")
    p.add_argument("--backend", choices=["bpftrace", "perf-probe"], help="force a tracer")
    p.add_argument("-d", "--duration", help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="events as NDJSON, the final state as JSON")

    p = _sub(subs, "trace", "an LTTng session on the pod's instrumented apps")
    _target(p)
    p.add_argument("--python", action="append", metavar="NAME", help="Python logger names")
    p.add_argument("--ust", action="append", metavar="PROV:EVENT", help="LTTng-UST tracepoints")
    p.add_argument("--jul", action="append", metavar="NAME", help="java.util.logging loggers")
    p.add_argument("-d", "--duration", help="stop after this long (default: until Ctrl-C)")
    p.add_argument(
        "-o", "--output-file", default="trace.tar.gz", metavar="FILE", help="the CTF trace"
    )
    p.add_argument(
        "--events", action="store_true", help="print the events instead of saving the trace"
    )

    p = _sub(
        subs,
        "diff",
        "compare two folded profiles: a differential flame graph or difffolded.pl's lines",
    )
    p.add_argument("base", metavar="BASE", help="the folded file compared against (before)")
    p.add_argument("target_file", metavar="TARGET", help="the folded file that changed (after)")
    p.add_argument(
        "-o",
        "--output-file",
        default="diff.svg",
        metavar="FILE",
        help="diff.svg (red: grew in TARGET, blue: shrank) or diff.folded "
        "(`stack base target` lines, as difffolded.pl)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="compare raw counts (default: BASE scaled to TARGET's total, difffolded.pl -n)",
    )
    p.add_argument(
        "--widths",
        choices=["target", "base"],
        default="target",
        help="svg: frame widths from TARGET (default) or from BASE (shows what vanished)",
    )
    p.add_argument(
        "--strip-hex", action="store_true", help="merge stacks differing only in 0x... addresses"
    )

    p = _sub(subs, "dump", "write a core dump of one process and download it")
    _target(p, selector=False)
    p.add_argument("--pid", type=int, required=True, help="the process (GET /processes, ps)")
    p.add_argument(
        "--type",
        choices=["mini", "heap", "full"],
        help=".NET: mini, heap (default) or full (createdump); others: full (gdb gcore)",
    )
    p.add_argument("-o", "--output-file", metavar="FILE", help="where to write it (core.PID)")
    p.add_argument("--keep", action="store_true", help="keep the dump on the agent too")

    p = _sub(subs, "memory", "where the memory is: every process's RSS, PSS, anon, file, swap")
    _target(p)
    p.add_argument("--pid", type=int, help="one process in detail (mappings, runtime's figures)")
    p.add_argument("-c", "--container", help="only this container's processes")
    p.add_argument(
        "--runtime",
        action="store_true",
        help="ask every process's runtime too (JVM: jcmd; CPython: a live read); --pid always does",
    )
    p.add_argument("--top", type=int, default=10, help="largest mappings listed (default 10)")
    _json_output(p)

    p = _sub(subs, "heapdump", "a heap dump of one process, downloaded: Java .hprof, else core")
    _target(p, selector=False)
    p.add_argument("--pid", type=int, required=True, help="the process (GET /processes, ps)")
    p.add_argument(
        "--type", choices=["heap", "full"], help="Java: heap (.hprof, default) or full (core)"
    )
    p.add_argument(
        "--all-objects",
        action="store_true",
        help="Java: unreachable objects too (no full GC first)",
    )
    p.add_argument("-o", "--output-file", metavar="FILE", help="where (heap.PID.hprof or core.PID)")
    p.add_argument("--keep", action="store_true", help="keep the dump on the agent too")

    p = _sub(subs, "counters", "a .NET process's System.Runtime counters, live (Ctrl-C ends)")
    _target(p, selector=False)
    p.add_argument("--pid", type=int, required=True, help="the .NET process")
    p.add_argument("--interval", type=int, default=1, help="seconds per refresh (default 1)")

    p = _sub(
        subs,
        "recorder",
        "the flight recorder: start, status, stop, or the flame graph of the recent past",
    )
    _target(p)
    p.add_argument(
        "action",
        nargs="?",
        choices=["start", "status", "stop"],
        help="start, status (the default) or stop; with --last/--from: the profile",
    )
    p.add_argument("-c", "--container", help="start: record this container only")
    p.add_argument("--pid", type=int, help="start: record this process only")
    p.add_argument("-F", "--frequency", type=int, help="start: samples per second (default 19)")
    p.add_argument("--retain", help="start: how much time the ring keeps (default 10m)")
    p.add_argument("--max-bytes", help="start: the ring's size bound (default 16Mi)")
    p.add_argument("--last", help="the profile of the last D (5m, 90s) the recorder holds")
    p.add_argument(
        "--from", dest="from_", metavar="T", help="the profile from T (Unix seconds or ISO 8601)"
    )
    p.add_argument("--to", metavar="T", help="... to T (default: now)")
    p.add_argument(
        "-o",
        "--output-file",
        default="flame.svg",
        metavar="FILE",
        help="the profile: flame.svg, x.folded, x.speedscope.json or x.pb.gz (by extension)",
    )
    p.add_argument("--all-pods", action="store_true", help="with deploy/NAME: every pod")
    p.add_argument("--by-pod", action="store_true", help="merged graph: a root frame per pod")
    p.add_argument("--json", dest="output", action="store_const", const="json", help="JSON")

    p = _sub(
        subs, "attach", "add the agent to a running pod as an ephemeral container (no restart)"
    )
    _target(p, selector=False)
    p.add_argument(
        "-c", "--container", help="the app container to join (default: the pod's default)"
    )
    p.add_argument(
        "--privileged", action="store_true", help="a privileged agent (default: capabilities only)"
    )
    p.add_argument("--image", help="the agent image (default: the one the webhook injects)")
    p.add_argument(
        "--idle-timeout",
        default=f"{DEFAULT_IDLE_S:g}s",
        help="the agent exits after this long without requests (default 30m)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to start")
    _json_output(p)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments, with the target and durations checked too: a missing or malformed
    TARGET is a usage error (exit 2, with the command's usage) before any kubeconfig
    is read, not a kubeconfig error that hides it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (
        args.command == "recorder"
        and args.target in ("start", "status", "stop")
        and args.action is None
        and getattr(args, "selector", None)
    ):
        # `recorder -l app=web start`: the action came where TARGET goes.
        args.target, args.action = None, args.target
    try:
        if args.command in POD_COMMANDS:
            parse_target(args.target, selector=getattr(args, "selector", None))
        if getattr(args, "duration", None) is not None:
            parse_duration(args.duration)
        if getattr(args, "idle_timeout", None) is not None:
            parse_duration(args.idle_timeout, flag="--idle-timeout")
    except UsageError as e:
        _subparser(parser, args.command).error(e.message)
    return args
