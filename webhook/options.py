"""Per-pod options: the ``tracecar.dev/*`` annotations parsed against the settings.

Pure. A bad value never blocks a pod: the default applies and a warning (returned
next to the options, shown by kubectl) says what was wrong and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

from tracecar_contract import MAX_PORT, MIN_PORT
from webhook.settings import IMAGE_PATTERN, QUANTITY_PATTERN, AgentAuth, PullPolicy, Settings

PREFIX: Final = "tracecar.dev/"
STATUS_ANNOTATION: Final = PREFIX + "status"
"""Written by the webhook on every injected pod (JSON: see :class:`webhook.inject.Status`)."""

BOOLEAN_ANNOTATIONS: Final = (
    "privileged",
    "runtime-symbols",
    "share-tmp",
    "host-paths",
    "native-sidecar",
    "continuous",
    "push",
)
VALUE_ANNOTATIONS: Final = ("image", "port", "cpu", "memory", "auth", "service-name")
AUTH_VALUES: Final[tuple[AgentAuth, ...]] = ("token", "none")
KNOWN: Final = frozenset((*BOOLEAN_ANNOTATIONS, *VALUE_ANNOTATIONS, "status"))

SERVICE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$"
"""A Pyroscope/Parca service_name: the characters their users put there (app/ns names)."""
_SERVICE_NAME = re.compile(SERVICE_NAME_PATTERN)

NamespacePolicy = Literal["default", "continuous", "no-push"]
"""What the pod's namespace asks for, from the webhook entry that matched it: the
MutatingWebhookConfiguration routes namespaces labelled ``tracecar.dev/continuous=true``
to ``/mutate/continuous`` and ``tracecar.dev/push=false`` to ``/mutate/no-push``
(the webhook has no API access, so the namespace's labels reach it this way)."""
NAMESPACE_POLICIES: Final[tuple[NamespacePolicy, ...]] = ("default", "continuous", "no-push")


_QUANTITY = re.compile(QUANTITY_PATTERN)
_IMAGE = re.compile(IMAGE_PATTERN)
_SUFFIX: Final = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


@dataclass(frozen=True, kw_only=True)
class Options:
    """Everything that can vary per pod, after defaults and overrides."""

    privileged: bool
    runtime_symbols: bool
    share_tmp: bool
    host_paths: bool
    native_sidecar: bool
    image: str
    image_pull_policy: PullPolicy
    port: int
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    auth: AgentAuth = "token"
    """``token``: the agent gets a random per-pod bearer token; ``none``: it serves
    every container of the pod without one (docs/security.md says what that costs)."""
    push: bool = True
    """The agent is connected to the stores the webhook is configured with."""
    continuous: bool = False
    """The agent profiles the whole pod continuously from start-up into the stores."""
    service_name: str | None = None
    """``tracecar.dev/service-name``; None: namespace/workload (webhook.sinks)."""


@dataclass(frozen=True, kw_only=True)
class ParsedOptions:
    options: Options
    warnings: tuple[str, ...]


def quantity_value(text: str) -> Decimal:
    """The numeric value of a quantity matching QUANTITY_PATTERN ("250m" -> 0.25)."""
    m = _QUANTITY.match(text)
    if m is None:
        raise ValueError(f"not a quantity: {text!r}")
    suffix = m.group(2) or ""
    return Decimal(text[: len(text) - len(suffix)]) * _SUFFIX[suffix]


def _short(value: object) -> str:
    """A value quoted for a warning, cut so warnings stay short (kubectl prints them)."""
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 40 else text[:37] + '..."'


def _boolean(value: object) -> bool | None:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


_DEFAULTS: dict[tuple[int, NamespacePolicy], tuple[Settings, ParsedOptions]] = {}
"""The options of pods without ``tracecar.dev/`` annotations (nearly all), per settings
object and namespace policy: settings are frozen, so the object is the key (held, so
its id is not reused)."""


def parse_options(
    annotations: Mapping[str, object] | None,
    *,
    settings: Settings,
    policy: NamespacePolicy = "default",
) -> ParsedOptions:
    """Options for a pod from its annotations (may be None), its namespace's `policy`
    and the settings' defaults (in that order of precedence)."""
    ann = {k[len(PREFIX) :]: v for k, v in (annotations or {}).items() if k.startswith(PREFIX)}
    if ann:
        return _parse(ann, settings, policy)
    # Measured: building the defaults was a tenth of a review's own CPU; they only
    # change with the settings, so they are built once per distinct settings.
    key = (id(settings), policy)
    cached = _DEFAULTS.get(key)
    if cached is not None and cached[0] is settings:
        return cached[1]
    if len(_DEFAULTS) >= 16:  # bounded even when settings keep changing (tests)
        _DEFAULTS.clear()
    parsed = _parse({}, settings, policy)
    _DEFAULTS[key] = (settings, parsed)
    return parsed


def _parse(ann: dict[str, object], settings: Settings, policy: NamespacePolicy) -> ParsedOptions:
    """Options from the ``tracecar.dev/`` annotations (prefix removed) over the defaults."""
    warnings: list[str] = []

    def flag(name: str, default: bool) -> bool:
        if name not in ann:
            return default
        parsed = _boolean(ann[name])
        if parsed is None:
            warnings.append(
                f'{PREFIX}{name}: {_short(ann[name])} is not "true" or "false"; '
                f"using {str(default).lower()}"
            )
            return default
        return parsed

    privileged = flag("privileged", settings.default_privileged)
    runtime_symbols = flag("runtime-symbols", settings.default_runtime_symbols)
    share_tmp = flag("share-tmp", settings.default_share_tmp)
    host_paths = flag("host-paths", settings.default_host_paths)
    native_sidecar = flag("native-sidecar", settings.default_native_sidecar)
    push = flag("push", settings.default_push and policy != "no-push")
    continuous = flag("continuous", settings.default_continuous or policy == "continuous")

    service_name: str | None = None
    if "service-name" in ann:
        raw = ann["service-name"]
        if isinstance(raw, str) and _SERVICE_NAME.match(raw.strip()):
            service_name = raw.strip()
        else:
            warnings.append(
                f"{PREFIX}service-name: {_short(raw)} is not a service name (letters, digits "
                "and ._/:- , at most 128); using namespace/workload"
            )

    image = settings.agent_image
    if "image" in ann:
        raw = ann["image"]
        if isinstance(raw, str) and _IMAGE.match(raw.strip()):
            image = raw.strip()
        else:
            warnings.append(
                f"{PREFIX}image: {_short(raw)} is not an image reference "
                f"(registry/name:tag or name@sha256:...); using {image}"
            )

    port = settings.agent_port
    if "port" in ann:
        raw = ann["port"]
        text = raw.strip() if isinstance(raw, str) else ""
        if text.isdigit() and MIN_PORT <= int(text) <= MAX_PORT:
            port = int(text)
        else:
            warnings.append(
                f"{PREFIX}port: {_short(raw)} is not a port in {MIN_PORT}-{MAX_PORT}; using {port}"
            )

    def limit(name: str, request: str, default_limit: str) -> tuple[str, str]:
        """The annotation sets the limit; the request follows it down when it is larger."""
        if name not in ann:
            return request, default_limit
        raw = ann[name]
        text = raw.strip() if isinstance(raw, str) else ""
        if not _QUANTITY.match(text) or quantity_value(text) <= 0:
            warnings.append(
                f'{PREFIX}{name}: {_short(raw)} is not a positive quantity (e.g. "500m", "2", '
                f'"256Mi", "1Gi"); using {default_limit}'
            )
            return request, default_limit
        if quantity_value(request) > quantity_value(text):
            request = text
        return request, text

    cpu_request, cpu_limit = limit("cpu", settings.agent_cpu_request, settings.agent_cpu_limit)
    memory_request, memory_limit = limit(
        "memory", settings.agent_memory_request, settings.agent_memory_limit
    )

    auth: AgentAuth = settings.default_auth
    if "auth" in ann:
        raw = ann["auth"]
        text = raw.strip().lower() if isinstance(raw, str) else ""
        if text in AUTH_VALUES:
            auth = "none" if text == "none" else "token"
        else:
            # Never silently off: a typo keeps the token.
            warnings.append(f'{PREFIX}auth: {_short(raw)} is not "token" or "none"; using {auth}')

    unknown = sorted(k for k in ann if k not in KNOWN)
    for name in unknown:
        warnings.append(
            f"{PREFIX}{name}: unknown annotation, ignored (known: "
            f"{', '.join(BOOLEAN_ANNOTATIONS + VALUE_ANNOTATIONS)})"
        )

    return ParsedOptions(
        options=Options(
            privileged=privileged,
            runtime_symbols=runtime_symbols,
            share_tmp=share_tmp,
            host_paths=host_paths,
            native_sidecar=native_sidecar,
            image=image,
            image_pull_policy=settings.agent_image_pull_policy,
            port=port,
            cpu_request=cpu_request,
            cpu_limit=cpu_limit,
            memory_request=memory_request,
            memory_limit=memory_limit,
            auth=auth,
            push=push,
            continuous=continuous,
            service_name=service_name,
        ),
        warnings=tuple(warnings),
    )
