"""The memory bounds of a local model, light to import (configs read them as defaults; torch is not loaded)."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "DEFAULT_MAX_SEQUENCE_TOKENS"]

DEFAULT_MAX_SEQUENCE_TOKENS = 4096
"""Most prompt + new tokens one sequence holds (below the model's context if that is larger), as the llama.cpp
engine's ``n_ctx_per_seq``. Attention memory grows with the square of a sequence: measured on CPU, fp32, peak resident
memory above the loaded model for one sequence, the bundled Gemma 3 270M (32768 positions) +1.25 GB at 4096 tokens;
the tiny model +34 MB at 2048, +105 MB at 4096, and 24 GB (killed) at 60,000 before this bound existed."""
DEFAULT_MAX_BATCH_TOKENS = 8192
"""Most tokens one batch holds: rows x (longest prompt + new tokens). Measured as above (one thread, 2-core machine):
the bundled model +1.4 GB for 16 rows x 512 tokens, +1.7 GB for 4 rows x 2048; the tiny model +0.5 GB for 16 rows x
2048 (which this bound now runs as four batches). With the sequence bound, the bundled model's worst case stays near
+1.7 GB, where 16 rows x 4096 would need about 20 GB (extrapolated)."""
