"""Symbols for the binaries people ship: stripped Go, separate debug files, inlined
frames, and the callers frameless leaves hide.

Modules (imported by name; this package's ``__init__`` stays empty so that
:mod:`agent.symbols` may use the pure pclntab parser without a cycle):

* :mod:`agent.symbolize.gopclntab`: Go's ``.gopclntab`` (1.18 and 1.20+ formats):
  functions, inline tree, file:line, frame size per PC. Pure.
* :mod:`agent.symbolize.debuginfo`: separate debug files (build-id path,
  ``.gnu_debuglink``, debuginfod with an on-disk cache).
* :mod:`agent.symbolize.resolver`: the per-profile symbolizer post-processing hands
  the collapser, and the per-object report of where names came from.
* ``_objects`` (ELF facts, cached per file) and ``_ehframe`` (the CFA rule at a PC).
"""
