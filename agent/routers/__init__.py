"""One APIRouter per concern; handlers stay thin and call the capability modules.

Each router reads its capability's service from ``app.state`` (the name it is
registered under in :data:`agent.app.CAPABILITIES`)::

    health        GET /healthz (no token)
    metrics       GET /metrics (its own token check)
    capabilities  GET /capabilities: the node's facts and every capability's
    processes     GET /processes, /processes/{pid}
    stacks        GET /processes/{pid}/stack
    profiles      /profiles: CPU and off-CPU profiles and their outputs
    profile_diff  GET /profiles/diff (included before profiles: not a profile id)
    triggers      /triggers: a profile when CPU use stays high
    recorder      /recorder: the flight recorder and any retained interval
    probes        /processes/{pid}/symbols, /probes: uprobes and USDT probes
    lttng         /lttng: tracepoints, sessions, their actions and traces
    dotnet        /dotnet: .NET traces, counters, process info
    dumps         /processes/{pid}/dump, /dumps: core dumps
    uploads       uploads of artifacts to the object store
"""
