"""Benchmark the production loop end to end, as a user runs it: ``procmem serve`` fed by an app, feedback,
``memory reflect`` and ``distill --once`` on a schedule, hot swaps, and what the app sees (issue 22, item 4).

A simulated app (this process) talks to ``procmem --home H serve`` (a subprocess, as a user starts it) with the
official ``openai`` client and ``--users`` concurrent threads:

1. **dev check** (the suite choice, never on the held-out stream): each ``--candidates`` suite's first ``--n-dev``
   held-out items are asked memory-free; the first candidate whose base pass rate is below its majority-answer
   rate is the suite of the run (candidates are listed in order of prior evidence that SFT on gold answers
   teaches them, eval/results/calibration.md).
2. **base evaluation**: the next ``--n-heldout`` held-out items (disjoint from dev and from every train item),
   memory-free (header ``X-Procmem-Memory: off``) and with memory; each answer scored by the task's own verifier
   (reasoning-gym's scorer), each response's ``X-Procmem-Adapter-Version`` recorded; beside it the majority
   answer's pass rate on the same items.
3. per round (``--rounds``): **traffic** (``--n-train`` new train items through ``--users`` threads; a share of
   calls carries ``metadata.procmem_verifier = numeric:<gold>``, a share gets a human-style correction
   ``POST /v1/episodes/{id}/feedback {"correction": gold}`` after a random delay, the rest never gets feedback);
   an **idle latency probe** (``--probe-n`` calls, one per ``--probe-interval`` s: an app's steady trickle);
   ``procmem memory reflect --max-calls N``; then ``procmem distill --once --json`` as a background process
   (niced, as the guide's timer runs it) while the same probe keeps calling, until the distill exits and, after a
   promotion, until responses carry the new version; then the **held-out evaluation** again.
4. **feedback check**: every feedback POST must have been answered 200, and every fed episode must show its
   feedback (``GET /v1/episodes/{id}``: the correction's id in ``feedback``, or ``verified`` for a verifier call).

Reported: accuracy per adapter version (memory-free and with memory) with Wilson 95% CIs, the majority-answer
rate; gateway p50/p95 of the probe idle and while distillation runs (and their ratio); the time from the first
traffic call to the first promotion (and to the first response from the new adapter); feedback lost; failed
requests (all, and during swaps); load averages; a PNG of accuracy and latency against time with distillation
shaded. Results are written after every phase (``--out PREFIX``: PREFIX.json, PREFIX.png), so a cut run leaves
what it measured.

Targets: after 2 cycles the served model's memory-free held-out accuracy >= base + 15 points and above the
majority answer; probe p95 while distillation runs <= 2x idle p95; 0 feedback lost; 0 failed requests.

    .venv/bin/python eval/bench/bench_production.py --json --out eval/results/bench/bench_production
    .venv/bin/python eval/bench/bench_production.py --model local:tiny --n-train 24 ...   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from procmem.core.machine import load_average
from procmem.testing import ServeProcess
from procmem.testing._serve import PROCMEM

__all__ = ["main"]

CANDIDATES = ("rg:chain_sum?min_terms=2&max_terms=3&min_digits=1&max_digits=1",
              "rg:lcm?min_numbers=2&max_numbers=2&min_value=1&max_value=40")
"""In order of prior evidence that SFT on gold answers teaches them (calibration: LoRA SFT on 150 chain_sum items
took it from 5/40 to 28/40; lcm gained least under PMD); the same spec strings as eval/configs/pmd.toml."""
HOLDOUT_SUITES = ("rg:letter_counting?min_words=1&max_words=3", "rg:syllogism")


class App:
    """The simulated app: ``openai`` clients against serve, every call logged with its time and outcome."""

    def __init__(self, port: int, t0: float, max_tokens: int) -> None:
        import openai

        self.root = f"http://127.0.0.1:{port}"
        self.t0 = t0
        self.max_tokens = max_tokens
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.feedback: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"base_url": f"{self.root}/v1", "api_key": "unused-on-loopback", "max_retries": 0,
                              "timeout": 600}
        self.client = openai.OpenAI(**kw)
        self.client_off = openai.OpenAI(**kw, default_headers={"X-Procmem-Memory": "off"})

    def now(self) -> float:
        return time.monotonic() - self.t0

    def ask(self, question: str, *, kind: str, memory: bool = True, verifier: str | None = None) -> dict[str, Any]:
        client = self.client if memory else self.client_off
        start = self.now()
        row: dict[str, Any] = {"kind": kind, "t": round(start, 3), "memory": memory}
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="procmem", messages=[{"role": "user", "content": question}], max_tokens=self.max_tokens,
                extra_body={"metadata": {"procmem_verifier": verifier}} if verifier else None)
            completion = raw.parse()
            row.update(ok=True, answer=completion.choices[0].message.content or "",
                       episode=raw.headers.get("X-Procmem-Episode-Id"),
                       version=raw.headers.get("X-Procmem-Adapter-Version"))
        except Exception as err:  # a failed request is a figure, never a crash of the app
            row.update(ok=False, error=f"{type(err).__name__}: {err}"[:300])
        row["latency_ms"] = round(1000 * (self.now() - start), 2)
        with self.lock:
            self.calls.append({k: v for k, v in row.items() if k != "answer"})
            if not row["ok"]:
                self.failures.append(row)
        return row

    def send_correction(self, episode: str, gold: str, feedback_id: str) -> None:
        import httpx

        row: dict[str, Any] = {"episode": episode, "id": feedback_id, "t": round(self.now(), 3)}
        try:
            response = httpx.post(f"{self.root}/v1/episodes/{episode}/feedback", timeout=120,
                                  json={"id": feedback_id, "correction": gold, "source": "human"})
            row["status"] = response.status_code
        except Exception as err:
            row.update(status=None, error=f"{type(err).__name__}: {err}"[:300])
        with self.lock:
            self.feedback.append(row)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    from procmem.core import Home
    from procmem.tasks import load_suite

    out = Path(args.out) if args.out else None
    results: dict[str, Any] = {"model": args.model, "users": args.users, "rounds": args.rounds,
                               "n_train_per_round": args.n_train, "n_heldout": args.n_heldout,
                               "max_tokens": args.max_tokens, "complete": False, "phases": [],
                               "load_avg_start": load_average(), "started_utc": _utc()}
    rng = random.Random(args.seed)
    if threading.current_thread() is threading.main_thread() and argv is None:  # run as a script
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` stops serve and distill too
    with tempfile.TemporaryDirectory(prefix="procmem-bench-production-") as scratch:
        home_dir = Path(args.home) if args.home else Path(scratch) / "home"
        home = Home(home_dir).ensure()
        _share_models(home.models, Path(args.models_dir) if args.models_dir else Home.resolve().models)
        distill_toml = home_dir / "distill.toml"
        distill_toml.write_text(_distill_toml(args))
        results["distill_toml"] = distill_toml.read_text()
        serve_log = home_dir.parent / "serve.log"
        server = ServeProcess(home_dir, model=args.model, log=serve_log).start(timeout=600)
        t0 = time.monotonic()
        app = App(server.port, t0, args.max_tokens)
        state = _State(results, app, out, args)
        try:
            # 1. dev check: the suite, chosen on dev items only
            dev_rows = []
            suite = None
            for spec in args.candidates:
                dev = load_suite(spec, split="test", n=args.n_dev)[:args.n_dev]
                row = {"suite": spec, **_evaluate(app, dev, memory=False, users=args.users, kind="dev")}
                dev_rows.append(row)
                if suite is None and row["accuracy"] < row["majority"]:
                    suite = spec
            results["dev_check"] = dev_rows
            results["suite"] = suite = suite or args.candidates[0]
            results["suite_rule"] = ("first candidate whose memory-free dev pass rate is below its dev majority-"
                                     "answer rate (candidates in order of prior SFT evidence)")
            pool = load_suite(suite, split="test", n=args.n_dev + args.n_heldout)
            heldout = pool[args.n_dev:args.n_dev + args.n_heldout]
            train = load_suite(suite, split="train", n=args.n_train * args.rounds)
            results["n_heldout_loaded"], results["n_train_loaded"] = len(heldout), len(train)
            state.phase("dev_check", 0.0, app.now())

            # 2. base evaluation
            state.evaluate("base", heldout)
            # 3. rounds
            for number in range(1, args.rounds + 1):
                items = train[(number - 1) * args.n_train:number * args.n_train]
                start = app.now()
                state.traffic(items, rng, number)
                state.phase(f"traffic_{number}", start, app.now())
                start = app.now()
                idle = state.probe_idle(pool[:args.n_dev])
                state.phase(f"idle_probe_{number}", start, app.now(), result=idle)
                start = app.now()
                reflect = _run_cli(home_dir, ["memory", "reflect", "--max-calls", str(args.reflect_calls),
                                              "--model", args.model, "--json"], timeout=args.step_timeout)
                state.phase(f"reflect_{number}", start, app.now(), result=reflect)
                start = app.now()
                distill = state.distill_with_probe(home_dir, distill_toml, pool[:args.n_dev])
                state.phase(f"distill_{number}", start, distill.pop("end"), result=distill, distill=True)
                state.evaluate(f"after_distill_{number}", heldout)
            # 4. feedback check
            state.wait_feedback()
            results["feedback_check"] = _check_feedback(app, state.fed)
            state.save()
        finally:
            server.stop(timeout=60)
            results["serve_log_tail"] = server.tail(1500)
    _summarise(results, app)
    results["load_avg_end"] = load_average()
    results["finished_utc"] = _utc()
    results["complete"] = True
    state.save()
    _print(results, as_json=args.json)
    return results


class _State:
    """What the run has measured so far, saved after every phase."""

    def __init__(self, results: dict[str, Any], app: App, out: Path | None, args: argparse.Namespace) -> None:
        self.results, self.app, self.out, self.args = results, app, out, args
        self.fed: list[dict[str, Any]] = []  # {"episode", "mode", "feedback_id"}
        self.pending: list[threading.Timer] = []

    def phase(self, name: str, start: float, end: float, *, result: Any = None, distill: bool = False) -> None:
        row = {"name": name, "start_s": round(start, 2), "end_s": round(end, 2), "s": round(end - start, 2),
               "load_avg": load_average(), "distill": distill}
        if result is not None:
            row["result"] = result
        self.results["phases"].append(row)
        print(f"[{_utc()}] {name}: {row['s']} s, load {row['load_avg']}", flush=True)
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        _summarise(self.results, self.app)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.with_suffix(".json").write_text(json.dumps(self.results, indent=1, sort_keys=True, default=str))
        try:
            _plot(self.results, self.app, self.out.with_suffix(".png"))
        except Exception as err:  # a plot is a figure, never worth the run
            print(f"plot failed: {err}", flush=True)

    def evaluate(self, name: str, heldout: list[Any]) -> None:
        start = self.app.now()
        row: dict[str, Any] = {"name": name, "t": round(start, 2)}
        for memory in (False, True):
            row["memory_on" if memory else "memory_off"] = _evaluate(
                self.app, heldout, memory=memory, users=self.args.users, kind=f"eval_{'on' if memory else 'off'}")
        row["t_end"] = round(self.app.now(), 2)
        self.results.setdefault("evaluations", []).append(row)
        self.phase(f"eval_{name}", start, self.app.now())

    def traffic(self, items: list[Any], rng: random.Random, number: int) -> None:
        from procmem.verifiers import reference_answer

        plan = []
        for task in items:
            draw = rng.random()
            mode = ("none" if draw < self.args.no_feedback_share else
                    "correction" if draw < self.args.no_feedback_share + self.args.correction_share else "verifier")
            plan.append((task, mode, rng.uniform(0.0, self.args.max_delay)))
        counts = Counter(mode for _, mode, _ in plan)
        passed = []

        def user(job: tuple[Any, str, float]) -> None:
            task, mode, delay = job
            gold = reference_answer(task) or ""
            row = self.app.ask(task.prompt, kind="train", verifier=f"numeric:{gold}" if mode == "verifier" else None)
            if not row["ok"]:
                return
            passed.append(_score(task, row["answer"]))
            if mode == "none" or not row.get("episode"):
                return
            fid = f"fix-{row['episode']}"
            self.fed.append({"episode": row["episode"], "mode": mode, "feedback_id": fid})
            if mode == "correction":
                timer = threading.Timer(delay, self.app.send_correction, (row["episode"], gold, fid))
                timer.daemon = True
                timer.start()
                self.pending.append(timer)

        with ThreadPoolExecutor(max_workers=self.args.users) as pool:
            list(pool.map(user, plan))
        self.results.setdefault("traffic", []).append(
            {"round": number, "calls": len(plan), "modes": dict(counts),
             "pass_rate_with_memory": round(sum(passed) / max(len(passed), 1), 4)})

    def probe_idle(self, questions: list[Any]) -> dict[str, Any]:
        latencies = [self.paced(questions[i % len(questions)].prompt, "probe_idle")["latency_ms"]
                     for i in range(self.args.probe_n)]
        return {"probe_ms": latencies, "p50": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95)}

    def paced(self, question: str, kind: str) -> dict[str, Any]:
        """One probe call, then a wait to keep the probe at one call per ``--probe-interval`` seconds: an app's
        steady trickle, not a loop that would take a core from the niced distill it measures."""
        start = time.monotonic()
        row = self.app.ask(question, kind=kind)
        time.sleep(max(0.0, self.args.probe_interval - (time.monotonic() - start)))
        return row

    def distill_with_probe(self, home: Path, config: Path, questions: list[Any]) -> dict[str, Any]:
        before = self._version()
        log = home.parent / f"distill-{len(self.results['phases'])}.log"
        with log.open("w") as handle:
            command = [str(PROCMEM), "--home", str(home), "distill", "--once", "--config", str(config), "--json",
                       *(["--force"] if self.args.force_promote else [])]
            proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True)
            i, latencies, swap = 0, [], []
            deadline = time.monotonic() + self.args.step_timeout
            try:
                while proc.poll() is None and time.monotonic() < deadline:
                    row = self.paced(questions[i % len(questions)].prompt, "probe_distill")
                    latencies.append(row["latency_ms"])
                    i += 1
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            end = self.app.now()
        text = log.read_text()
        last = next((line for line in reversed(text.splitlines()) if line.startswith("{")), "")
        try:
            summary = json.loads(last)
        except json.JSONDecodeError:
            summary = {"status": "error", "reason": text[-800:]}
        result = {"status": summary.get("status"), "version": summary.get("version"),
                  "promoted": summary.get("promoted"), "reason": summary.get("reason"), "rc": proc.returncode,
                  "summary": {k: (_gate_brief(v) if k == "gate" else v) for k, v in summary.items()},
                  "probe_ms": latencies, "p50": _pct(latencies, 0.5), "p95": _pct(latencies, 0.95), "end": end,
                  "version_before": before}
        if summary.get("promoted"):
            self.results.setdefault("promotions", []).append({"version": summary.get("version"), "t": round(end, 2)})
            # keep calling until the gateway answers with the new version: the swap, under traffic
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                row = self.paced(questions[i % len(questions)].prompt, "probe_swap")
                swap.append(row)
                i += 1
                if row.get("version") == summary.get("version"):
                    self.results["promotions"][-1]["first_response_t"] = row["t"]
                    break
            result["swap_calls"] = len(swap)
            result["swap_failed"] = sum(not r["ok"] for r in swap)
        return result

    def _version(self) -> str | None:
        return next((c.get("version") for c in reversed(self.app.calls) if c.get("version")), None)

    def wait_feedback(self) -> None:
        for timer in self.pending:
            timer.join(timeout=self.args.max_delay + 120)


def _evaluate(app: App, tasks: list[Any], *, memory: bool, users: int, kind: str) -> dict[str, Any]:
    from procmem.verifiers import build_verifier, reference_answer

    def one(task: Any) -> tuple[bool, str | None, bool]:
        row = app.ask(task.prompt, kind=kind, memory=memory)
        return (row["ok"] and _score(task, row["answer"])), row.get("version"), row["ok"]

    with ThreadPoolExecutor(max_workers=users) as pool:
        rows = list(pool.map(one, tasks))
    golds = [g for g in map(reference_answer, tasks) if g is not None]
    answer = Counter(golds).most_common(1)[0][0] if golds else ""
    majority = sum(build_verifier(t).verify(answer).passed for t in tasks) / max(len(tasks), 1)
    passed = sum(p for p, _, _ in rows)
    low, high = _wilson(passed, len(tasks))
    return {"n": len(tasks), "passed": passed, "accuracy": round(passed / max(len(tasks), 1), 4),
            "ci95": [round(low, 4), round(high, 4)], "versions": dict(Counter(str(v) for _, v, _ in rows)),
            "failed": sum(not ok for _, _, ok in rows), "majority": round(majority, 4), "majority_answer": answer}


def _score(task: Any, answer: str) -> bool:
    from procmem.verifiers import build_verifier

    try:
        return bool(build_verifier(task).verify(answer).passed)
    except Exception:
        return False


def _wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _check_feedback(app: App, fed: list[dict[str, Any]]) -> dict[str, Any]:
    import httpx

    posts = {row["id"]: row for row in app.feedback}
    lost, not_200, missing = [], 0, 0
    for item in fed:
        if item["mode"] == "correction":
            post = posts.get(item["feedback_id"])
            if post is None or post.get("status") != 200:
                not_200 += 1
                lost.append(item["episode"])
                continue
        seen = False
        for _ in range(20):  # an episode's feedback is attached when it is written: allow the writer a moment
            response = httpx.get(f"{app.root}/v1/episodes/{item['episode']}", timeout=60)
            if response.status_code == 200:
                data = response.json()
                seen = (any(f.get("id") == item["feedback_id"] for f in data.get("feedback", []))
                        if item["mode"] == "correction" else bool(data.get("verified")))
            if seen:
                break
            time.sleep(0.5)
        if not seen:
            missing += 1
            lost.append(item["episode"])
    return {"fed_episodes": len(fed), "correction_posts": len(app.feedback),
            "posts_not_200": not_200, "not_visible": missing, "lost": len(lost), "lost_ids": lost[:20]}


def _summarise(results: dict[str, Any], app: App) -> None:
    """The headline figures from what has been measured so far (re-run after every phase)."""
    calls = list(app.calls)
    by_version: dict[str, dict[str, Any]] = {}
    for row in results.get("evaluations", []):
        for key in ("memory_off", "memory_on"):
            cell = row[key]
            version = max(cell["versions"], key=cell["versions"].get) if cell["versions"] else "?"
            by_version.setdefault(f"{row['name']} ({version})", {})[key] = {
                k: cell[k] for k in ("accuracy", "ci95", "passed", "n")}
            by_version[f"{row['name']} ({version})"]["majority"] = cell["majority"]
    results["accuracy_by_version"] = by_version
    idle = [c["latency_ms"] for c in calls if c["kind"] == "probe_idle" and c["ok"]]
    busy = [c["latency_ms"] for c in calls if c["kind"] == "probe_distill" and c["ok"]]
    results["latency_ms"] = {
        "idle": {"n": len(idle), "p50": _pct(idle, 0.5), "p95": _pct(idle, 0.95)},
        "during_distill": {"n": len(busy), "p50": _pct(busy, 0.5), "p95": _pct(busy, 0.95)}}
    if idle and busy:
        ratio = round(_pct(busy, 0.95) / _pct(idle, 0.95), 3)  # type: ignore[operator]
        results["latency_ms"]["p95_ratio"] = ratio
        results["latency_ok"] = ratio <= 2.0
    by_round: dict[str, dict[str, Any]] = {}
    for phase in results.get("phases", []):
        kind, _, number = phase["name"].rpartition("_")
        if kind in ("idle_probe", "distill") and isinstance(phase.get("result"), dict) and "p95" in phase["result"]:
            key = "idle" if kind == "idle_probe" else "during_distill"
            by_round.setdefault(number, {})[key] = {q: phase["result"][q] for q in ("p50", "p95")}
    for row in by_round.values():
        if row.get("idle", {}).get("p95") and row.get("during_distill", {}).get("p95"):
            row["p95_ratio"] = round(row["during_distill"]["p95"] / row["idle"]["p95"], 3)
    results["latency_ms_by_round"] = by_round
    train_calls = [c["t"] for c in calls if c["kind"] == "train"]
    promotions = results.get("promotions", [])
    if train_calls and promotions:
        results["first_promotion_s"] = round(promotions[0]["t"] - min(train_calls), 1)
        if "first_response_t" in promotions[0]:
            results["first_promoted_response_s"] = round(promotions[0]["first_response_t"] - min(train_calls), 1)
    results["requests"] = {"total": len(calls), "failed": len(app.failures),
                           "failed_during_swaps": _failed_in_swaps(results, app),
                           "failures": app.failures[:10]}
    evaluations = results.get("evaluations", [])
    if len(evaluations) >= 2:
        base, last = evaluations[0]["memory_off"], evaluations[-1]["memory_off"]
        gain = round(100 * (last["accuracy"] - base["accuracy"]), 1)
        results["final_vs_base_points"] = gain
        results["final_vs_majority_points"] = round(100 * (last["accuracy"] - last["majority"]), 1)
        results["accuracy_ok"] = gain >= 15 and last["accuracy"] > last["majority"]
    check = results.get("feedback_check")
    if check is not None:
        results["feedback_ok"] = check["lost"] == 0
    results["requests_ok"] = not app.failures


def _failed_in_swaps(results: dict[str, Any], app: App) -> int:
    """Failed requests from the start of a distillation that promoted until the first response of the new version."""
    windows = []
    for phase in results.get("phases", []):
        if phase.get("distill") and (phase.get("result") or {}).get("promoted"):
            version = phase["result"]["version"]
            promo: dict[str, Any] = next((p for p in results.get("promotions", []) if p["version"] == version), {})
            windows.append((phase["start_s"], promo.get("first_response_t", phase["end_s"] + 120)))
    return sum(1 for f in app.failures if any(a <= f["t"] <= b for a, b in windows))


def _plot(results: dict[str, Any], app: App, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, lat) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for ax in (acc, lat):
        for phase in results.get("phases", []):
            if phase.get("distill"):
                ax.axvspan(phase["start_s"] / 60, phase["end_s"] / 60, color="tab:orange", alpha=0.2)
            elif phase["name"].startswith("reflect"):
                ax.axvspan(phase["start_s"] / 60, phase["end_s"] / 60, color="tab:gray", alpha=0.12)
    evals = results.get("evaluations", [])
    if evals:
        xs = [e["t_end"] / 60 for e in evals]
        for key, label, style in (("memory_off", "memory-free", "o-"), ("memory_on", "with memory", "s--")):
            ys = [100 * e[key]["accuracy"] for e in evals]
            lows = [100 * e[key]["ci95"][0] for e in evals]
            highs = [100 * e[key]["ci95"][1] for e in evals]
            acc.errorbar(xs, ys, yerr=[[y - lo for y, lo in zip(ys, lows, strict=True)],
                                       [hi - y for y, hi in zip(ys, highs, strict=True)]], fmt=style, label=label,
                         capsize=3)
            for x, y, e in zip(xs, ys, evals, strict=True):
                if key == "memory_off":
                    versions = e[key]["versions"]
                    acc.annotate(max(versions, key=versions.get) if versions else "", (x, y),
                                 textcoords="offset points", xytext=(4, -12), fontsize=8)
        acc.plot(xs, [100 * e["memory_off"]["majority"] for e in evals], ":", color="k", label="majority answer")
        acc.legend(loc="upper left", fontsize=8)
    acc.set_ylabel("held-out pass rate (%)")
    acc.set_title(f"procmem serve, production loop: {results.get('suite', '')}", fontsize=9)
    colours = {"train": "tab:blue", "probe_idle": "tab:green", "probe_distill": "tab:red", "probe_swap": "tab:purple",
               "eval_off": "tab:gray", "eval_on": "tab:olive", "dev": "tab:cyan"}
    for kind, colour in colours.items():
        rows = [c for c in app.calls if c["kind"] == kind and c["ok"]]
        if rows:
            lat.scatter([r["t"] / 60 for r in rows], [r["latency_ms"] for r in rows], s=4, color=colour, label=kind)
    failed = [c for c in app.calls if not c["ok"]]
    if failed:
        lat.scatter([r["t"] / 60 for r in failed], [r["latency_ms"] for r in failed], marker="x", color="k",
                    label="failed")
    lat.set_yscale("log")
    lat.set_ylabel("gateway latency (ms)")
    lat.set_xlabel("minutes since serve started (orange: distill --once, gray: memory reflect)")
    lat.legend(loc="upper left", fontsize=7, ncol=4, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gate_brief(gate: Any) -> Any:
    if not isinstance(gate, dict):
        return gate
    keep = ("baseline", "test_baseline", "test_candidate", "holdout_baseline", "holdout_candidate", "improved",
            "holdout_ok", "passed", "test_stats", "holdout_stats", "excluded")
    return {k: gate[k] for k in keep if k in gate}


def _distill_toml(args: argparse.Namespace) -> str:
    holdout = ", ".join(json.dumps(s) for s in HOLDOUT_SUITES)
    return f"""# eval/bench/bench_production.py: the guide's distill.toml for a serve-fed home, sized to finish
model = "{args.model}"
min_new_episodes = 1

[traces]
k = {args.k}
max_tokens = {args.max_tokens}
max_problems = {args.max_problems}

[train]
epochs = {args.epochs}
batch_size = {args.batch_size}
lr = {args.lr}

[gate]
heldout_share = 0.2
min_heldout = {args.min_heldout}
n_test = 100
max_tokens = {args.max_tokens}
holdout_suites = [{holdout}]
n_holdout = {args.n_holdout}
"""


def _share_models(models: Path, cache: Path) -> None:
    """Point the bench home's model cache at the user's (converted weights are reused, not rebuilt)."""
    cache.mkdir(parents=True, exist_ok=True)
    if models.is_symlink() or models.resolve() == cache.resolve():
        return
    if models.exists() and not any(models.iterdir()):
        models.rmdir()
    if not models.exists():
        models.symlink_to(cache, target_is_directory=True)


def _run_cli(home: Path, argv: list[str], *, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    try:
        proc = subprocess.run([str(PROCMEM), "--home", str(home), *argv], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ})
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, stdout, stderr = None, str(err.stdout or ""), "timeout"
    last = next((line for line in reversed(stdout.splitlines()) if line.startswith("{")), "")
    try:
        summary: Any = json.loads(last)
    except json.JSONDecodeError:
        summary = {"output": (stdout + stderr)[-800:]}
    return {"rc": rc, "s": round(time.monotonic() - start, 1), "summary": summary}


def _utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="local:default", help="Model spec (local:tiny for a smoke run).")
    parser.add_argument("--candidates", type=lambda s: tuple(x for x in s.split(",,") if x), default=CANDIDATES,
                        help="Candidate suites, separated by ',,' (a spec may hold commas), in order of preference.")
    parser.add_argument("--n-dev", type=int, default=40, help="Dev items per candidate (the suite choice).")
    parser.add_argument("--n-heldout", type=int, default=100, help="Held-out items the app evaluates on.")
    parser.add_argument("--n-train", type=int, default=250, help="New train items sent per round.")
    parser.add_argument("--rounds", type=int, default=2, help="Distillation cycles.")
    parser.add_argument("--users", type=int, default=16, help="Concurrent app users.")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of every call (and of distill).")
    parser.add_argument("--correction-share", type=float, default=0.5,
                        help="Share of train calls that get a correction (POST feedback) later.")
    parser.add_argument("--no-feedback-share", type=float, default=0.15,
                        help="Share of train calls that never get feedback (the rest carry a verifier).")
    parser.add_argument("--max-delay", type=float, default=5.0, help="Corrections arrive 0 to this many s late.")
    parser.add_argument("--probe-n", type=int, default=40, help="Sequential probe calls of the idle latency row.")
    parser.add_argument("--probe-interval", type=float, default=0.5,
                        help="The probe calls once per this many seconds (idle and while distillation runs).")
    parser.add_argument("--reflect-calls", type=int, default=20, help="memory reflect --max-calls.")
    parser.add_argument("--k", type=int, default=2, help="distill.toml [traces] k.")
    parser.add_argument("--max-problems", type=int, default=400, help="distill.toml [traces] max_problems.")
    parser.add_argument("--epochs", type=int, default=3, help="distill.toml [train] epochs.")
    parser.add_argument("--batch-size", type=int, default=8, help="distill.toml [train] batch_size.")
    parser.add_argument("--lr", type=float, default=3e-4, help="distill.toml [train] lr.")
    parser.add_argument("--min-heldout", type=int, default=20, help="distill.toml [gate] min_heldout.")
    parser.add_argument("--n-holdout", type=int, default=20, help="distill.toml [gate] n_holdout (per suite).")
    parser.add_argument("--step-timeout", type=float, default=1800, help="Longest reflect or distill, in s.")
    parser.add_argument("--force-promote", action="store_true",
                        help="distill --once --force (smoke runs only: exercises the swap on a model that learns "
                             "nothing).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the app's feedback plan and delays.")
    parser.add_argument("--home", default=None, help="PROCMEM_HOME of the run (default: a temporary one).")
    parser.add_argument("--models-dir", default=None, help="Model cache to share (default: the default home's).")
    parser.add_argument("--out", default=None, help="Write PREFIX.json and PREFIX.png after every phase.")
    parser.add_argument("--json", action="store_true", help="Print the results as one JSON line, last.")
    return parser.parse_args(argv)


def _print(results: dict[str, Any], *, as_json: bool) -> None:
    print(f"model {results['model']}, suite {results.get('suite')}, {results['users']} users, "
          f"{results['rounds']} rounds x {results['n_train_per_round']} train calls, "
          f"load avg {results['load_avg_start']} -> {results.get('load_avg_end')}")
    for row in results.get("dev_check", []):
        print(f"  dev {row['suite']}: base {100 * row['accuracy']:.1f}% vs majority {100 * row['majority']:.1f}%")
    for name, row in results.get("accuracy_by_version", {}).items():
        off, on = row["memory_off"], row["memory_on"]
        print(f"  {name:28s} memory-free {100 * off['accuracy']:5.1f}% [{100 * off['ci95'][0]:.1f}, "
              f"{100 * off['ci95'][1]:.1f}]  with memory {100 * on['accuracy']:5.1f}% [{100 * on['ci95'][0]:.1f}, "
              f"{100 * on['ci95'][1]:.1f}]  majority {100 * row['majority']:.1f}%")
    for phase in results.get("phases", []):
        if phase.get("distill"):
            r = phase["result"]
            print(f"  {phase['name']}: {phase['s']} s, {r.get('status')} {r.get('version')}: {r.get('reason')}")
    lat = results.get("latency_ms", {})
    print(f"  probe latency idle p50/p95 {lat.get('idle')}; during distill {lat.get('during_distill')}; "
          f"p95 ratio {lat.get('p95_ratio')} (target <= 2)")
    for number, row in results.get("latency_ms_by_round", {}).items():
        print(f"    round {number}: idle {row.get('idle')}, during distill {row.get('during_distill')}, "
              f"p95 ratio {row.get('p95_ratio')}")
    print(f"  first call -> first promotion {results.get('first_promotion_s')} s, -> first response of it "
          f"{results.get('first_promoted_response_s')} s")
    print(f"  feedback {results.get('feedback_check')}")
    req = results.get("requests", {})
    print(f"  requests {req.get('total')}, failed {req.get('failed')}, failed during swaps "
          f"{req.get('failed_during_swaps')}")
    print(f"  final memory-free vs base {results.get('final_vs_base_points')} points, vs majority "
          f"{results.get('final_vs_majority_points')} points (target: >= +15 and > 0)")
    if as_json:
        print(json.dumps(results, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
