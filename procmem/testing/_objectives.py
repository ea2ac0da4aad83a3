"""The Objective conformance suite: every training :class:`~procmem.distill.Objective` must pass all of it.

One training step's contract: a finite scalar loss that reaches the trainable (LoRA) weights and only
them, honest token counts, and state that survives a checkpoint round trip.

Use it by subclassing :class:`ObjectiveConformance` in a ``test_*.py`` file and providing three fixtures:
``objective`` (the objective under test), ``model`` (a fresh trainable LoRA model, e.g. from
:func:`procmem.distill.train.load_trainable_model`) and ``batch`` (the :class:`~procmem.distill.Example` s of one
step)::

    import pytest
    from procmem.distill import DistillConfig, Example
    from procmem.distill.train import load_trainable_model
    from procmem.llm.tiny import build_tiny_model
    from procmem.testing import ObjectiveConformance

    class TestMyObjective(ObjectiveConformance):
        @pytest.fixture
        def trainable(self, tmp_path):
            return load_trainable_model(build_tiny_model(tmp_path / "tiny"), DistillConfig(), None)

        @pytest.fixture
        def model(self, trainable):
            return trainable[0]

        @pytest.fixture
        def objective(self, trainable):
            return MyObjective(tokenizer=trainable[1])

        @pytest.fixture
        def batch(self):
            return [Example(task_id="a", prompt="Q: 2 + 3?\\nA:", teacher_prompt="Q: 2 + 3?\\nA:",
                            completion=" 5\\n")]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procmem.distill import Example, Objective

__all__ = ["ObjectiveConformance"]


def _step(objective: Objective, model: Any, batch: Sequence[Example]) -> None:
    """One forward and backward pass, checking the loss and its token counts."""
    model.train()
    model.zero_grad()
    out = objective.loss(model, batch)
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), f"not a finite scalar: {out.loss}"
    assert out.tokens > 0 and out.processed_tokens >= out.tokens, (out.tokens, out.processed_tokens)
    out.loss.backward()


class ObjectiveConformance:
    """Behaviour every training objective must show. Subclasses provide the ``objective``, ``model`` and
    ``batch`` fixtures."""

    def test_it_is_an_objective_with_a_name(self, objective: Objective) -> None:
        from procmem.distill import Objective

        assert isinstance(objective, Objective)
        assert isinstance(objective.name, str) and objective.name

    def test_one_step_trains_the_lora_weights_and_only_them(self, objective: Objective, model: Any,
                                                            batch: Sequence[Example]) -> None:
        import torch

        _step(objective, model, batch)
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert trainable and any(p.grad is not None and torch.any(p.grad != 0) for p in trainable), (
            "the loss does not reach the trainable weights")
        assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
        model.zero_grad()

    def test_its_state_survives_a_checkpoint_round_trip(self, objective: Objective, model: Any,
                                                        batch: Sequence[Example]) -> None:
        _step(objective, model, batch)
        objective.after_step(model)
        state = objective.state_dict()
        objective.load_state_dict(state)
        assert objective.state_dict().keys() == state.keys()
        model.zero_grad()
