"""procmem end to end with the Python API: solve -> reflect -> distill -> gate.

    python examples/pipeline.py                      # the bundled Gemma 3 270M, in $PROCMEM_HOME (~/.procmem)
    python examples/pipeline.py local:tiny SUITE     # any model spec and task suite (see `procmem solve --help`)
"""

import sys

from procmem.agent import AgentSession, SessionConfig
from procmem.core import Home
from procmem.distill import DistillConfig, DistillResult, GateConfig, run_distillation
from procmem.tasks import load_suite

SUITE = "rg:chain_sum?min_terms=2&max_terms=2&min_digits=1&max_digits=1"


def main(model: str = "local:default", suite: str = SUITE, n: int = 32) -> DistillResult:
    home = Home.resolve().ensure()  # $PROCMEM_HOME, else ~/.procmem

    # 1. Solve: the agent retrieves memory, answers, is verified, retries with the feedback, records each episode.
    with AgentSession.open(SessionConfig(model=model, attempts=2), home) as session:
        report = session.solve(load_suite(suite, split="train", n=n))
        print(f"solved {report.passed} of {report.n} train tasks")

        # 2. Reflect: the policy turns its verified episodes into insights (per problem) and patterns (across them).
        reflection = session.reflect(max_calls=n)
        print(f"reflection: {reflection.insights_added} insights, {reflection.patterns_added} patterns")

    # 3. Distill: a teacher that reads the memory and the feedback writes corrections; the verifier keeps the good
    #    ones and a LoRA adapter learns them, memory-free.
    # 4. Gate: the adapter is promoted only if it beats the promoted one on held-out tasks, without forgetting.
    config = DistillConfig(model=model, gate=GateConfig(test_suites=(suite,)))
    result = run_distillation(config, home)
    print(f"distill: {result.status} {result.version or ''} {result.reason}")
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    main(model=args[0] if args else "local:default", suite=args[1] if len(args) > 1 else SUITE)
