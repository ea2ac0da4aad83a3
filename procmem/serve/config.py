"""``procmem serve`` settings (``--config serve.toml``; flags win)."""

from __future__ import annotations

from pydantic import Field

from procmem.core import Config

__all__ = ["LOOPBACK_HOSTS", "ServeConfig"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServeConfig(Config):
    """The gateway: which model it serves, where it listens, and its limits."""

    model: str = Field(default="local:default",
                       description="'local:default', 'local:tiny', 'local:/path/to/hf_dir' or 'litellm:<model>'.")
    adapter: str = Field(default="promoted", description="'promoted' follows the registry's promoted version and "
                         "hot-swaps when it changes; 'vN' pins a version; 'none' serves the base model.")
    host: str = Field(default="127.0.0.1", description="Interface to bind; other than loopback needs API keys.")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port (0: any free port, printed at start).")
    memory: bool = Field(default=True, description="Augment requests with procedural memory (per request: "
                         "header X-Procmem-Memory: off).")
    memory_k: int = Field(default=3, ge=0, le=32, description="Worked examples retrieved per request.")
    max_tokens: int = Field(default=64, ge=1, le=8192,
                            description="max_tokens when a request sets neither max_tokens nor max_completion_tokens.")
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="Largest request body accepted (413 above).")
    max_batch: int = Field(default=16, ge=1, le=256, description="Most prompts the local model decodes in one batch.")
    max_wait_ms: float = Field(default=50.0, ge=0.0, le=1000.0,
                               description="How long the first queued request waits for others to batch with "
                               "(concurrent clients arrive spread over tens of ms; a batch runs for seconds).")
    watch_s: float = Field(default=1.0, gt=0.0, le=3600.0,
                           description="How often the promoted-adapter pointer is checked (adapter = promoted).")
    workers: int = Field(default=64, ge=1, le=1024,
                         description="Threads that run model calls and stream responses (concurrent requests).")
