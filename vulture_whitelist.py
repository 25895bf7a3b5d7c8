"""What `vulture agent vulture_whitelist.py --min-confidence 60` may not call unused.

Run by ``scripts/test lint``. Each name below is used, but not by a call vulture can
see; anything vulture finds that is not here is dead code: remove it.
"""

# ruff: noqa: B018, F821
# mypy: ignore-errors

# Registered by a decorator: FastAPI routes and exception handlers.
get_capabilities, healthz, get_process, diff_profiles, diff_other_methods
create_profile, list_profiles, get_profile, delete_profile, flamegraph, speedscope, pprof
bpftrace_output, start_recorder, recorder_status, stop_recorder, save_recorder_interval
recorder_profile, create_trigger, list_triggers, get_trigger, delete_trigger
create_probe, get_probe, probe_events, delete_probe
create_session, get_session, delete_session, unknown_action
list_traces, get_trace, trace_summary, delete_trace
create_dump, list_dumps, get_dump, delete_dump, upload_perf_data, upload_trace
process_memory, recorder_memory
_agent_error, _tool_error, _invalid, _unexpected

# Read by uvicorn: its server's main loop polls should_exit (agent/__main__.py sets it).
_.should_exit

# Pydantic: configuration and validators are read by the model machinery.
model_config, _._check_loglevel, _._preset, _._power_of_two, _._unique
_._binary, _._function, _._consistent, _._one_target

# Wire formats: fields of models, TypedDicts and dataclasses that the JSON answers,
# job.json or the nettrace parser carry (read by serialization, not by name).
event_types, by_event, display_name, runtime_cookie, command_line, arch
pointer_size, processors, qpc_sync, qpc_frequency, sampling_rate_ns
sequence, capture_thread, processor, _.sequence, _.capture_thread, _.processor
limit_bytes, enabled, discarded_events, lost_packets, overwrite, library, host_tid
attached_at, sees
cpu_time_s, rss_bytes, start_time_s, call_graph_reason, profilers, url_expires_in_s
taken_at, DROP_REASONS
# The typed results and response models (ProfileResult, ProfileView, ProbeView,
# SessionView, TriggerView, RecorderStatus): fields set for the answer and job.json.
(
    _.artifacts,
    _.bpftrace_warnings,
    _.dropped_samples,
    _.folded_samples,
    _.jvm_perf_maps,
)
(
    _.leaf_callers_recovered,
    _.lost_samples,
    _.off_cpu_us,
    _.perf_warnings,
    artifacts,
)
(
    bpftrace_warnings,
    cpu_percent_now,
    deleted,
    dropped_by_rate_limit,
    dropped_samples,
)
(
    elapsed_s,
    ends_at,
    evicted_buckets,
    folded_samples,
    fraction,
    jvm_perf_maps,
)
(
    leaf_callers_recovered,
    lost_by_tracer,
    lost_samples,
    metadata,
    off_cpu_us,
)
(
    perf_maps_used,
    perf_warnings,
    requested_from,
    requested_to,
)
samples_with_unresolved_frames
# The .NET trace's and the dump's results (TraceResult, DumpResult), RssTrendView.
(_.stop_error, _.recorded_s, _.parse_error, _.written_bytes)
(stop_error, recorded_s, parse_error, written_bytes, growth_mib_per_min)
# Memory snapshots (agent.memory._model) and the RSS triggers' view: answer fields.
(
    swap_pss_bytes,
    anonymous_bytes,
    file_bytes,
    pss_anon_bytes,
    pss_file_bytes,
    pss_shmem_bytes,
    private_bytes,
    shared_bytes,
    locked_bytes,
)
(
    committed_bytes,
    used_bytes,
    metaspace_used_bytes,
    metaspace_committed_bytes,
    instances,
    class_name,
    python_version,
    arenas,
)
(
    arenas_highwater,
    arenas_allocated_total,
    blocks_in_use,
    bytes_in_use,
    held_bytes,
    size_classes,
    walked_arenas,
)
(
    python_allocator,
    totals,
    by_kind,
    largest_mappings,
    rss_mib_now,
    rss_growth_mib_per_min_now,
)
# Off-CPU recording statistics (agent.profiling.offcpu_fold.TimedStats): counted for the
# notes and the tests, even where no note reads them.
matched, open_at_end, no_user_stack, _.matched, _.open_at_end, _.no_user_stack

# The .NET diagnostics IPC protocol's constants and its dump command, named as the
# protocol documents them (agent/dotnet/_ipc.py): the table is the protocol's.
OK, E_UNKNOWN_MAGIC, GENERATE_CORE_DUMP, PROCESS_ENVIRONMENT, dump_payload

# Test seams: called by the tests only.
live_children, clear_cache, latest_rss, largest

# agent.symbolize: the frameless-leaf fix-up's hook and the pclntab reader's base.
_.missing_caller, _._base

# agent.symbolize.dwarf: the open debug file a DwarfInline reads lazily (kept alive with
# it), and its counters, read by bench/symbolize_bench.py and the tests.
_stream, units_decoded, dies_read

# A module's __getattr__ (PEP 562): Python calls it for agent.__version__, lazily.
__getattr__

# Wire fields of the typed answers (probes' and LTTng's plans, /capabilities' sections,
# the sinks' status, the recorder's pushes, speedscope files): filled by the agent, read
# by clients and the OpenAPI document.
effective, kernel_tracing, commands, cleanup, startValue, endValue, image
intervals_pushed, profiles_pushed, last_interval, recent_intervals
queued_items, consecutive_failures, needs_full_image, how_to_get_full
