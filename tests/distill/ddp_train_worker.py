"""One process of a training job started by ``accelerate launch`` (or plain ``python``) in the distill tests.

``python ddp_train_worker.py CONFIG.json MODEL_DIR WORK_DIR LOG_DIR [SLEEP_S]`` trains ``make_build()`` with
:func:`train_adapter`. Each process writes ``LOG_DIR/pid-<rank>`` and appends the task ids of every shard it
trains on to ``LOG_DIR/shards-<rank>.jsonl``; ``SLEEP_S`` slows each step so that a test can kill it midway.
The main process writes the :class:`TrainResult` to ``LOG_DIR/result.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

from test_distill_train import make_build  # noqa: E402

from procmem.core.fileio import write_json  # noqa: E402
from procmem.distill import DistillConfig  # noqa: E402
from procmem.distill._distributed import rank  # noqa: E402
from procmem.distill.objectives import ForwardingObjective, Objective, make_objective  # noqa: E402
from procmem.distill.train import train_adapter  # noqa: E402


class LoggedObjective(ForwardingObjective):
    """The real objective; logs each shard (and sleeps) before computing its loss."""

    def __init__(self, inner: Objective, log: Path, sleep: float) -> None:
        super().__init__(inner)
        self.log, self.sleep = log, sleep

    def loss(self, model: Any, batch: Any) -> Any:
        with self.log.open("a") as handle:
            handle.write(json.dumps([e.prompt for e in batch]) + "\n")
        time.sleep(self.sleep)
        return super().loss(model, batch)


def main() -> None:
    config = DistillConfig.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    logs = Path(sys.argv[4])
    sleep = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"pid-{rank()}").write_text(str(os.getpid()))
    result = train_adapter(make_build(), config, model_dir=Path(sys.argv[2]), work_dir=Path(sys.argv[3]), quiet=True,
                           objective_factory=lambda tok, cfg: LoggedObjective(make_objective(cfg.objective, tok, cfg),
                                                                      logs / f"shards-{rank()}.jsonl", sleep))
    if rank() == 0:
        write_json(logs / "result.json", result.to_dict())


if __name__ == "__main__":
    main()
