"""Every interpreter the tests and benchmarks run apps with, in one place.

The pyenv builds are the machine's (see ../shared/platform-notes.md); Debian's
python3.11 is installed by scripts/setup because it is built with USDT probes.
"""

PY38 = "/root/.pyenv/versions/3.8.18/bin/python3.8"
PY39 = "/root/.pyenv/versions/3.9.18/bin/python3.9"
PY311 = "/root/.pyenv/versions/3.11.7/bin/python3.11"
PY312 = "/root/.pyenv/versions/3.12.1/bin/python3.12"
PY313 = "/root/.pyenv/versions/3.13.0/bin/python3.13"
PY311_DEBIAN = "/usr/bin/python3.11"
"""Debian's build: ``--with-dtrace``, so it carries USDT probes (pyenv's do not)."""
