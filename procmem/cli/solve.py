"""``procmem solve`` and ``procmem demo``: run the agent over a suite and record every episode."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.markup import escape
from rich.table import Table

from procmem.cli.app import app
from procmem.cli.common import (
    ADAPTER_HELP,
    CHROMA_URL_HELP,
    ENGINE_HELP,
    MODEL_HELP,
    SUITE_HELP,
    err_console,
    home_of,
    open_checkpointer,
    out_console,
    print_json_line,
)
from procmem.core import Split, new_id
from procmem.core.progress import progress_bar

if TYPE_CHECKING:
    from procmem.agent import SessionConfig, SolveConfig, SolveReport
    from procmem.core import Home
    from procmem.llm import PolicyHost
    from procmem.memory import ReflectionReport

__all__ = ["DEMO_SUITE", "run_solve"]

DEMO_SUITE = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"


def run_solve(config: SolveConfig, home: Home, *, run_id: str, chroma_url: str | None = None,
              quiet: bool = False, reflect: bool = False
              ) -> tuple[SolveReport, dict[str, int], ReflectionReport | None]:
    """Solve ``config.n`` tasks of ``config.suite``; returns the report, the memory counts afterwards and,
    with ``reflect``, what inline reflection did and cost (the policy reflects on each problem right after
    its episode: at most one more LLM call per task)."""
    from procmem.agent import AgentSession
    from procmem.core.telemetry import StepTracer, Telemetry
    from procmem.tasks import load_suite
    from procmem.verifiers import build_verifier

    settings = config.session.model_copy(update={"reflect": True}) if reflect else config.session
    with _collector_paused():
        telemetry = Telemetry.configure(service_name="procmem-solve")  # OTEL_EXPORTER_OTLP_ENDPOINT, else off
        tracer = StepTracer(telemetry) if telemetry.enabled else None
        with _Preload(settings, home) as preload:  # the model loads on the other core while the tasks are built
            tasks = load_suite(config.suite, split=cast(Split, config.split), n=config.n, check=build_verifier)
            err_console.print(f"run id {run_id} (resume with --resume {run_id})", highlight=False)
            err_console.print(f"loading model {config.session.model} ...", highlight=False)
            session = AgentSession.open(settings, home, chroma_url=chroma_url, tracer=tracer, host=preload.host())
    with session, open_checkpointer(home) as saver:
        with progress_bar(err_console, quiet=quiet) as progress:
            bar = progress.add_task(f"solving {len(tasks)} tasks", total=len(tasks))
            report = session.solve(tasks, checkpointer=saver, run_id=run_id, on_done=lambda _: progress.advance(bar))
        assert session.memory is not None
        stats = {str(level): count for level, count in session.memory.stats().items()}
    telemetry.shutdown()  # sends the spans still batched
    return report, stats, session.reflection


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the command imports and loads: imports create many objects and
    no garbage, and the collections they trigger cost ~10% of a cold start's CPU. What startup made is then frozen
    out of later collections, which therefore stay as cheap as before."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


class _Preload:
    """Opens the session's policy in a background thread when it runs on llama.cpp (whose model load runs in C,
    without the GIL, beside the tasks being built). Leaving the block without taking :meth:`host` closes whatever
    was loaded. Memory's embedder is not loaded here: llama-cpp-python's ``Llama(verbose=False)`` silences the
    process's stdout and stderr while it loads, which would swallow the main thread's output (an error message)."""

    def __init__(self, settings: SessionConfig, home: Home) -> None:
        self._settings, self._home = settings, home
        self._result: Future[PolicyHost] | None = None
        self._taken = False

    def __enter__(self) -> _Preload:
        from procmem.llm import runs_on_llamacpp

        settings = self._settings
        if not runs_on_llamacpp(settings.model, settings.engine):
            return self
        import llama_cpp  # noqa: F401  (here: no import in two threads at once; procmem.llm set OpenMP's policy)

        from procmem.llm import PolicyHost

        result: Future[PolicyHost] = Future()

        def load() -> None:
            try:
                result.set_result(PolicyHost.open(self._home, model=settings.model, adapter=settings.adapter,
                                                  engine=settings.engine, limits=settings.limits))
            except BaseException as err:  # raised again by host()
                result.set_exception(err)

        self._result = result
        threading.Thread(target=load, name="procmem-preload", daemon=True).start()
        return self

    def host(self) -> PolicyHost | None:
        """The loaded policy (waiting for it; its load's error is raised here), or None: AgentSession loads it."""
        if self._result is None:
            return None
        self._taken = True
        return self._result.result()

    def __exit__(self, *exc: object) -> None:
        if self._result is not None and not self._taken:
            with contextlib.suppress(BaseException):
                self._result.result().close()


def _report_table(config: SolveConfig, report: SolveReport) -> Table:
    table = Table(title=escape(f"{config.suite} [{config.split}] on {config.session.model}"))
    for column in ("n", "passed", "accuracy", "mean attempts", "wall time", "tokens/s"):
        table.add_column(column, justify="right")
    table.add_row(str(report.n), str(report.passed), f"{report.accuracy:.1%}", f"{report.mean_attempts:.2f}",
                  f"{report.wall_time_s:.1f} s", f"{report.tokens_per_s:.1f}")
    return table


def _summary(config: SolveConfig, report: SolveReport, run_id: str, stats: dict[str, int],
             reflection: ReflectionReport | None) -> dict[str, object]:
    return {
        "suite": config.suite, "split": config.split, "model": config.session.model, "run_id": run_id,
        "n": report.n, "passed": report.passed, "accuracy": report.accuracy,
        "mean_attempts": report.mean_attempts, "wall_time_s": report.wall_time_s,
        "tokens_per_s": report.tokens_per_s, "episodes_recorded": report.n - report.resumed,
        "resumed": report.resumed, "memory": stats,
        "reflection": reflection.to_dict() if reflection is not None else None,
    }


@app.command()
def solve(
    ctx: typer.Context,
    suite: Annotated[str | None, typer.Option(help=SUITE_HELP)] = None,
    n: Annotated[int | None, typer.Option(help="How many tasks.")] = None,
    split: Annotated[str | None, typer.Option(help="train or test (disjoint seeds).")] = None,
    attempts: Annotated[int | None, typer.Option(help="Most attempts per task; retries see verifier feedback.")] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    engine: Annotated[str | None, typer.Option(help=ENGINE_HELP)] = None,
    adapter: Annotated[str | None, typer.Option(help=ADAPTER_HELP)] = None,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Answer without retrieving memory.")] = False,
    concurrency: Annotated[int | None, typer.Option(help="Tasks at once (the local model batches them).")] = None,
    config: Annotated[str | None, typer.Option(help="A TOML file of SolveConfig settings; flags win over it.")] = None,
    resume: Annotated[str | None, typer.Option(help="Resume the run with this id (printed by every run).")] = None,
    chroma_url: Annotated[str | None, typer.Option(help=CHROMA_URL_HELP)] = None,
    reflect: Annotated[bool, typer.Option("--reflect", help="Reflect on each problem right after solving it "
                                                           "(one more model call per task).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last stdout line.")] = False,
) -> None:
    """Solve tasks from a suite with the agent; every episode is recorded to memory."""
    flags = {"suite": suite, "n": n, "split": split, "attempts": attempts, "model": model, "engine": engine,
             "adapter": adapter,
             "concurrency": concurrency, "use_memory": False if no_memory else None}
    with _collector_paused():
        cfg = _solve_config(config, flags)
    home = home_of(ctx)
    run_id = resume or new_id()[:12]
    report, stats, reflection = run_solve(cfg, home, run_id=run_id, chroma_url=chroma_url, reflect=reflect)
    console = err_console if json_out else out_console
    console.print(_report_table(cfg, report))
    if reflection is not None:
        console.print(f"inline reflection: {reflection.calls} calls, {reflection.prompt_tokens} prompt + "
                      f"{reflection.completion_tokens} completion tokens; {reflection.unparseable} unparseable; "
                      f"insights {reflection.insights_added} added, {reflection.insights_merged} merged",
                      highlight=False)
    if json_out:
        print_json_line(_summary(cfg, report, run_id, stats, reflection))


def _solve_config(path: str | None, flags: Mapping[str, object]) -> SolveConfig:
    from procmem.agent.config import SolveConfig
    from procmem.core import config_from_flags, load_config

    if path is not None:
        return load_config(SolveConfig, path, **flags)
    if flags["suite"] is None:
        from procmem.core import ProcmemError

        raise ProcmemError("no task suite given", where="--suite",
                           fix=f"pass e.g. --suite '{DEMO_SUITE}' or --config FILE.toml")
    return config_from_flags(SolveConfig, dict(flags))


@app.command()
def demo(
    ctx: typer.Context,
    n: Annotated[int, typer.Option(help="How many tasks.")] = 20,
    model: Annotated[str, typer.Option(help="The model to run.")] = "local:default",
) -> None:
    """The quickstart: solve easy sums on the bundled model, record them, show the memory."""
    from procmem.agent.config import SessionConfig, SolveConfig

    home = home_of(ctx)
    cfg = SolveConfig(suite=DEMO_SUITE, n=n, session=SessionConfig(model=model, attempts=2))
    out_console.print(f"[bold]procmem demo[/]: {n} tasks of {DEMO_SUITE} on {model}; home {home.root}")
    report, stats, _ = run_solve(cfg, home, run_id=new_id()[:12])
    out_console.print(_report_table(cfg, report))
    table = Table(title="memory")
    table.add_column("level")
    table.add_column("entries", justify="right")
    for level, count in stats.items():
        table.add_row(level, str(count))
    out_console.print(table)
    out_console.print("next: [bold]procmem memory stats[/], [bold]procmem solve --help[/]")
