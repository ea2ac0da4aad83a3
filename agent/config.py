"""The agent's job config: ``procmem solve`` (and ``procmem demo``) over a task suite."""

from __future__ import annotations

from pydantic import Field

from procmem.core.config import Config, GenerationConfig
from procmem.core.llm import Engine

__all__ = ["SolveConfig"]


class SolveConfig(Config):
    """``procmem solve``: run the agent over a task suite and record every episode."""

    suite: str = Field(description="Task suite: 'rg:<dataset>?key=value&...' or a path to a JSONL task file.")
    n: int = Field(default=10, ge=1, description="How many tasks to take from the suite.")
    split: str = Field(default="train", pattern="^(train|test)$", description="Which split: train or test.")
    attempts: int = Field(default=2, ge=1, le=20, description="Most attempts per task; retries see verifier feedback.")
    model: str = Field(default="local:default",
                       description="'local:default', 'local:tiny', 'local:/path/to/hf_dir' or 'litellm:<model>'.")
    adapter: str = Field(default="promoted", description="LoRA adapter of a local model: 'none', 'promoted' (the "
                         "registry's current version; the base model if none), 'vN' or an adapter directory.")
    use_memory: bool = Field(default=True, description="Retrieve procedural memory before answering.")
    memory_k: int = Field(default=3, ge=0, le=32, description="How many memory entries to put in the prompt.")
    engine: Engine = Field(default="auto", description="How a local model runs: llamacpp (the GGUF on llama.cpp), "
                           "transformers, or auto (llama.cpp for local:default when llama-cpp-python is installed).")
    concurrency: int = Field(default=8, ge=1, le=256,
                             description="Tasks solved at once; the local backend batches them.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="Decoding settings.")
