"""Benchmark ``procmem serve``: what the gateway adds to a call, and how it batches concurrent clients.

In ONE process (so the ratios compare like with like), on the bundled model by default:

- **latency**: p50/p95 of ``--n`` sequential calls of each kind, interleaved so all see the same load:
  (a) directly on the backend in-process (the same MicroBatcher-wrapped model serve uses), (b) through serve
  over loopback HTTP with the official ``openai`` client and memory off (the gateway's own cost: HTTP, JSON,
  the call-log commit), and (c) the same with memory on (adds retrieval: one MiniLM embedding and the Chroma
  queries);
- **throughput**: completion tokens/s with 1, 8, 16 and 32 concurrent clients through serve, against the
  engine's own batched throughput (one ``generate`` of 16 prompts in-process);
- **write cost**: the mean wall time to commit a call to the call log (the durability point), per call, as
  measured inside the server (it includes waiting for the GIL and the log's lock under concurrency; one
  commit alone takes well under a millisecond).

Targets (issue 10): added p50 latency <= max(5% of the direct call, 10 ms); throughput at 16 clients >= 0.8x the
engine's batched throughput.

``--trace`` turns OpenTelemetry on (issue 25): every call's spans, with message content, are exported over OTLP/HTTP
to a sink this script runs on loopback (it reads and discards each request), so the added p50 includes the spans.

    .venv/bin/python eval/bench/bench_serve.py [--model local:default] [--tokens 16] [--n 32] [--calls 2] [--trace]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from procmem.core.machine import load_average

__all__ = ["main"]

QUESTIONS = [f"A shop sold {a} apples in the morning and {b} in the afternoon. How many apples did it sell?"
             for a, b in [(12, 7), (31, 45), (8, 9), (60, 14), (23, 23), (5, 77), (40, 41), (19, 2),
                          (88, 11), (3, 65), (27, 36), (50, 50), (14, 9), (71, 6), (33, 44), (9, 90)]]
_NEVER = "<<no stop>>"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    import uvicorn

    from procmem.agent import Message
    from procmem.core import GenerationConfig, Home
    from procmem.serve import ServeConfig
    from procmem.serve.app import Gateway
    from procmem.serve.backends import ChatInput, backend_for

    results: dict[str, Any] = {"model": args.model, "tokens": args.tokens, "load_avg_start": load_average(),
                               "tracing": args.trace}
    sink = _OtlpSink() if args.trace else None
    with tempfile.TemporaryDirectory(prefix="procmem-bench-serve-") as scratch:
        home = Home(Path(scratch) / "home").ensure()
        port = _free_port()
        config = ServeConfig.model_validate({
            "port": port,
            "session": {"model": args.model, "adapter": "none", "generation": {"max_tokens": args.tokens}},
            **({"telemetry": {"otlp_endpoint": sink.url, "capture_content": True}} if sink else {}),
            **({"max_wait_ms": args.max_wait_ms} if args.max_wait_ms is not None else {})})
        results["max_wait_ms"] = config.max_wait_ms
        gateway = Gateway(config, home)
        server = uvicorn.Server(uvicorn.Config(gateway.app(), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            backend = backend_for(gateway.host.current)
            generation = GenerationConfig(max_tokens=args.tokens, stop=(_NEVER,))

            def direct(i: int) -> int:
                text = QUESTIONS[i % len(QUESTIONS)]
                question = ChatInput([Message("user", text)], [{"role": "user", "content": text}], "", generation)
                return backend.complete(question).completion_tokens

            client = _client(port, memory=False)
            memory_client = _client(port, memory=True)
            direct(0), _serve_call(client, 0, args.tokens), _serve_call(memory_client, 0, args.tokens)  # warm up
            results["latency_ms"] = _latencies({
                "direct": direct,
                "serve_memory_off": lambda i: _serve_call(client, i, args.tokens),
                "serve_memory_on": lambda i: _serve_call(memory_client, i, args.tokens),
            }, args.n)
            engine = _engine_batched(backend, generation)
            results["engine_batched_16_tokens_per_s"] = engine
            results["throughput_tokens_per_s"] = {
                str(c): _throughput(port, c, args.calls, args.tokens) for c in (1, 8, 16, 32)}
            snapshot = gateway.metrics
            results["call_log_commit_ms_mean"] = round(1000 * snapshot.log_write_s / max(snapshot.episodes, 1), 3)
            results["calls_recorded"] = gateway.log.count()
        finally:
            server.should_exit = True
            thread.join(timeout=60)
            if sink is not None:
                gateway.tracing.telemetry.flush()
                results["otlp_export_requests"] = sink.requests
                sink.close()
    lat = results["latency_ms"]
    added = lat["serve_memory_off"]["p50"] - lat["direct"]["p50"]
    results["added_p50_ms"] = round(added, 2)
    results["added_p50_budget_ms"] = round(max(0.05 * lat["direct"]["p50"], 10.0), 2)
    results["added_p50_ok"] = added <= results["added_p50_budget_ms"]
    results["throughput_16_vs_engine"] = round(results["throughput_tokens_per_s"]["16"] / engine, 3)
    results["throughput_16_ok"] = results["throughput_16_vs_engine"] >= 0.8
    results["load_avg_end"] = load_average()
    _print(results)
    return results


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="local:default", help="Model spec (local:tiny for a smoke run).")
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens of every call.")
    parser.add_argument("--n", type=int, default=32,
                        help="Sequential calls per latency row (with 8, p50 moved by 20 ms between quiet runs).")
    parser.add_argument("--calls", type=int, default=2, help="Calls per client in the throughput rows.")
    parser.add_argument("--max-wait-ms", type=float, default=None,
                        help="The batch window (ServeConfig.max_wait_ms; default: serve's default).")
    parser.add_argument("--trace", action="store_true",
                        help="OpenTelemetry on: spans (with content) exported over OTLP/HTTP to a loopback sink.")
    return parser.parse_args(argv)


class _OtlpSink:
    """An OTLP/HTTP endpoint on loopback that reads each export request, answers 200 and counts it."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                sink.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _client(port: int, *, memory: bool) -> Any:
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600,
                         default_headers={} if memory else {"X-Procmem-Memory": "off"})


def _serve_call(client: Any, i: int, tokens: int) -> int:
    completion = client.chat.completions.create(
        model="procmem", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=tokens,
        stop=[_NEVER])
    return int(completion.usage.completion_tokens)


def _latencies(calls: dict[str, Any], n: int) -> dict[str, dict[str, float]]:
    """p50/p95 of ``n`` calls of each kind, interleaved (direct, serve, serve, direct, ...) so that every kind
    sees the same machine load."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(n):
        for name, call in calls.items():
            start = time.perf_counter()
            call(i)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: {"p50": round(statistics.median(t), 2), "p95": round(sorted(t)[min(n - 1, int(0.95 * n))], 2)}
            for name, t in times.items()}


def _engine_batched(backend: Any, generation: Any) -> float:
    """The engine's own batched throughput: one generate of 16 prompts on the wrapped model."""
    from procmem.agent import Message
    from procmem.agent.conversation import render_chat

    llm = backend.llm.llm  # PromptBackend -> MicroBatcher -> the model
    prompts = [render_chat([Message("user", q)], "") for q in QUESTIONS]
    config = generation.model_copy(update={"stop": (_NEVER, "\nQuestion:")})
    start = time.perf_counter()
    outputs = llm.generate(prompts, config)
    return round(sum(o.completion_tokens for o in outputs) / (time.perf_counter() - start), 2)


def _throughput(port: int, clients: int, calls: int, tokens: int) -> float:
    def run(c: int) -> int:
        client = _client(port, memory=False)
        return sum(_serve_call(client, c * calls + i, tokens) for i in range(calls))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        total = sum(pool.map(run, range(clients)))
    return round(total / (time.perf_counter() - start), 2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _print(results: dict[str, Any]) -> None:
    lat = results["latency_ms"]
    print(f"model {results['model']}, {results['tokens']} new tokens per call, batch window "
          f"{results['max_wait_ms']} ms, load avg "
          f"{results['load_avg_start']} -> {results['load_avg_end']}")
    if results.get("tracing"):
        print(f"  OpenTelemetry on: spans with content exported over OTLP/HTTP "
              f"({results.get('otlp_export_requests', 0)} export requests)")
    for name, row in lat.items():
        print(f"  latency {name:18s} p50 {row['p50']:9.2f} ms   p95 {row['p95']:9.2f} ms")
    print(f"  added p50 (serve, memory off) {results['added_p50_ms']} ms (budget {results['added_p50_budget_ms']} ms: "
          f"{'ok' if results['added_p50_ok'] else 'MISSED'})")
    print(f"  engine batched (16 prompts in-process): {results['engine_batched_16_tokens_per_s']} tokens/s")
    for clients, value in results["throughput_tokens_per_s"].items():
        print(f"  through serve, {clients:>2} clients: {value} tokens/s")
    print(f"  16 clients / engine batched: {results['throughput_16_vs_engine']}x (target >= 0.8: "
          f"{'ok' if results['throughput_16_ok'] else 'MISSED'})")
    print(f"  call-log commit per call: {results['call_log_commit_ms_mean']} ms ({results['calls_recorded']} calls)")
    print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
