"""``GET /metrics``: Prometheus text format, kept by hand (no client library needed)."""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["LATENCY_BUCKETS", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters and one latency histogram, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_count = 0
        self.latency_sum = 0.0
        self.tokens: Counter[str] = Counter()
        self.episodes = 0
        self.memory_episodes = 0
        self.feedback = 0
        self.log_write_s = 0.0

    def request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def call(self, seconds: float, prompt_tokens: int, completion_tokens: int, write_s: float) -> None:
        with self._lock:
            self.latency_count += 1
            self.latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1
            self.tokens["prompt"] += prompt_tokens
            self.tokens["completion"] += completion_tokens
            self.episodes += 1
            self.log_write_s += write_s

    def feedback_received(self) -> None:
        with self._lock:
            self.feedback += 1

    def memory_episode(self) -> None:
        with self._lock:
            self.memory_episodes += 1

    def render(self, *, model: str, adapter: str | None, swaps: int) -> str:
        with self._lock:
            lines = ["# HELP procmem_requests_total HTTP requests by path and status.",
                     "# TYPE procmem_requests_total counter"]
            lines += [f'procmem_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            lines += ["# HELP procmem_chat_latency_seconds Chat completion latency, request to last byte.",
                      "# TYPE procmem_chat_latency_seconds histogram"]
            lines += [f'procmem_chat_latency_seconds_bucket{{le="{b}"}} {n}'
                      for b, n in zip(LATENCY_BUCKETS, self.buckets, strict=True)]
            lines += [f'procmem_chat_latency_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                      f"procmem_chat_latency_seconds_sum {self.latency_sum:.6f}",
                      f"procmem_chat_latency_seconds_count {self.latency_count}",
                      "# HELP procmem_tokens_total Tokens by kind.", "# TYPE procmem_tokens_total counter"]
            lines += [f'procmem_tokens_total{{kind="{k}"}} {self.tokens[k]}' for k in ("prompt", "completion")]
            lines += ["# HELP procmem_episodes_written_total Calls recorded in the call log.",
                      "# TYPE procmem_episodes_written_total counter",
                      f"procmem_episodes_written_total {self.episodes}",
                      "# HELP procmem_episode_write_seconds_total Time spent committing calls to the log.",
                      "# TYPE procmem_episode_write_seconds_total counter",
                      f"procmem_episode_write_seconds_total {self.log_write_s:.6f}",
                      "# HELP procmem_memory_episodes_total Verified calls written to procedural memory (again when "
                      "feedback changes one).",
                      "# TYPE procmem_memory_episodes_total counter",
                      f"procmem_memory_episodes_total {self.memory_episodes}",
                      "# HELP procmem_feedback_total Feedback received (repeats not counted).",
                      "# TYPE procmem_feedback_total counter",
                      f"procmem_feedback_total {self.feedback}",
                      "# HELP procmem_adapter_info The adapter version being served.",
                      "# TYPE procmem_adapter_info gauge",
                      f'procmem_adapter_info{{model="{model}",version="{adapter or "base"}"}} 1',
                      "# HELP procmem_adapter_swaps_total Hot swaps since start.",
                      "# TYPE procmem_adapter_swaps_total counter",
                      f"procmem_adapter_swaps_total {swaps}"]
        return "\n".join(lines) + "\n"
