"""Profile formats, pure: no service, no process, no I/O beyond what a caller hands in.

The one folded format (``a;b;c count``) every backend emits, and everything made from
it. The agent renders its profiles with these and the plugin merges, diffs and renders
many pods' profiles with the same code, without loading either service::

    collapse     stackcollapse-perf: perf script output -> folded stacks; parse_folded,
                 format_folded
    pyspy        py-spy's raw output and summary line -> folded stacks
    flamegraph   folded stacks -> flame graph SVG (and the differential graph's)
    speedscope   folded stacks -> speedscope JSON
    pprof        folded stacks -> pprof protobuf (gzipped)
    diff         difffolded.pl: two folded files -> ``stack base target`` rows, and the
                 differential graph's widths and deltas
    diffgraph    two folded texts -> diff folded or differential SVG
"""
