"""Benchmarks: scripts that measure procmem's parts, apart from the evidence experiment (``procmem.eval``).

Each is a script with its own ``main``, run from the repository root as ``python eval/bench/NAME.py`` or
``python -m procmem.eval.bench.NAME``; its docstring gives its options and targets, and
docs/benchmarks.md the figures measured. Nothing is imported from here by the library.

- ``bench_cli``: the CLI's start-up (``procmem --help``, ``memory stats``, ``verify``) as whole processes,
  against a bare interpreter start;
- ``bench_distill``: distill's LoRA SFT throughput (tokens per CPU-second), completion-only logits against
  full logits and TRL;
- ``bench_distill_ddp``: distillation's training in one process against two under ``accelerate launch``
  (time, and equality of losses and LoRA weights);
- ``bench_embed``: the MiniLM embedder on llama.cpp against sentence-transformers (cold start, latency per
  question, batch throughput, parity);
- ``bench_gate``: A/A test of the promotion gate (how often it promotes a model over itself, sampled runs or
  LoRA retrains under other seeds) and its power;
- ``bench_generation``: the bundled model's generation, transformers against the llama.cpp engine (tokens/s
  by batch and concurrency, load time, share of the compute limit);
- ``bench_memory``: Chroma retrieval latency and recall at scale against numpy brute force, write throughput,
  the agent's whole retrieval;
- ``bench_memory_levels``: whether memory's insights and patterns fill on the bundled model after
  ``solve`` and ``memory reflect``;
- ``bench_memory_server``: episodes/s of concurrent writer processes on a Chroma server, and query latency
  while they write;
- ``bench_production``: the production loop as a user runs it (an app of 16 ``openai`` users with feedback,
  ``procmem serve``, ``memory reflect`` and ``distill --once`` on a schedule): accuracy per adapter version,
  latency idle and while distilling, feedback lost, failed requests;
- ``bench_sandbox``: code verifications per second, with the sandbox's minimal root against without it;
- ``bench_serve``: what ``procmem serve`` adds to a call's latency, and its throughput with concurrent
  clients against the engine's own batching;
- ``bench_solve``: ``procmem solve`` end to end, the llama.cpp engine against transformers, and the cold start
  to the first token;
- ``parity_engines``: greedy outputs and per-token log-probs of the llama.cpp engine against transformers, per
  precision, on the base model and with a LoRA adapter;
- ``calibrate``: which candidate suites the experiment should train on (base pass rate, memory uplift and
  majority baseline on the dev split only).
"""
