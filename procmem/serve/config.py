"""``procmem serve`` settings (``--config serve.toml``; flags win). The agent session it runs (model, engine,
adapter, memory, decoding) is the ``[session]`` table (:class:`~procmem.agent.SessionConfig`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from procmem.agent.config import SessionJob
from procmem.core.config import Config

__all__ = ["LOOPBACK_HOSTS", "ConsoleConfig", "ServeConfig", "TelemetryConfig"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ConsoleConfig(BaseModel):
    """The web console at ``/ui`` (``[console]`` in serve.toml)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Serve the web console at /ui (same access rules as the API: "
                          "an admin or feedback key signs in; without keys, loopback only).")
    distill_every: str = Field(default="", pattern=r"^\s*(\d+(\.\d+)?\s*[smhd]?)?\s*$",
                               description="How often your timer runs `procmem distill --once` (6h, 30m, 1d), so "
                               "the overview can say when the next run is due; empty: the interval of `procmem "
                               "distill --every`, read from its log, if one ran.")
    eval_runs: list[str] = Field(default_factory=list, description="Output directories of `procmem eval --out` "
                                 "runs to list on the Runs page (relative paths are from the working directory).")
    session_hours: float = Field(default=12.0, gt=0.0, le=24.0 * 30, description="How long a console sign-in "
                                 "lasts before the key must be entered again.")
    poll_s: float = Field(default=5.0, ge=1.0, le=600.0, description="How often the overview and the episode "
                          "list refresh themselves while open.")


class TelemetryConfig(Config):
    """OpenTelemetry in and out (``[telemetry]`` of serve.toml; see docs/guides/opentelemetry.md)."""

    otlp_endpoint: str | None = Field(
        default=None, description="OTLP/HTTP base URL to export spans to (e.g. http://127.0.0.1:4318; /v1/traces is "
        "added). Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off.")
    capture_content: bool | None = Field(
        default=None, description="Record message content (conversation, answer, query, comments; redacted) on the "
        "spans. Unset: OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT decides (off by default).")
    service_name: str = Field(default="procmem-serve", min_length=1, description="The spans' service.name.")
    receiver: bool = Field(
        default=False, description="Accept OTLP/HTTP traces (protobuf or JSON) at POST /v1/traces and import their "
        "GenAI spans as calls and episodes of the caller's tenant (needs the feedback scope when keys exist).")


class ServeConfig(SessionJob):
    """The gateway: the session it serves (``[session]``), where it listens, and its limits.

    Configs written before ``[session]`` may keep ``model``, ``engine``, ``adapter``, ``memory`` (``use_memory``),
    ``memory_k``, ``max_tokens`` (``generation.max_tokens``) and ``max_batch`` (``concurrency``) at the top level.
    In serve, ``session.adapter = "promoted"`` follows the registry and hot-swaps on promotion, and
    ``session.concurrency`` is the most prompts the local model decodes in one batch.
    """

    SESSION_KEYS: ClassVar[Mapping[str, str]] = {
        **SessionJob.SESSION_KEYS, "memory": "use_memory", "max_tokens": "generation.max_tokens",
        "max_batch": "concurrency"}
    SESSION_DEFAULTS: ClassVar[Mapping[str, Any]] = {"concurrency": 16, "generation": {"max_tokens": 64}}

    host: str = Field(default="127.0.0.1", description="Interface to bind; other than loopback needs API keys.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port, printed at start).")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted (413 above).")
    max_wait_ms: float = Field(default=50.0, ge=0.0, le=1000.0,
                               description="How long the first queued request waits for others to batch with "
                               "(concurrent clients arrive spread over tens of ms; a batch runs for seconds).")
    watch_s: float = Field(default=1.0, gt=0.0, le=3600.0,
                           description="How often the promoted-adapter pointer is checked (session.adapter = "
                           "promoted).")
    workers: int = Field(default=64, ge=1, le=1024,
                         description="Threads that run model calls and stream responses (concurrent requests).")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig,
                                       description="OpenTelemetry: span export and the OTLP receiver.")
    console: ConsoleConfig = Field(default_factory=ConsoleConfig, description="The web console at /ui.")
