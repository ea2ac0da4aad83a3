"""Conformance checks every training :class:`~procmem.distill.Objective` must pass (see test_distill_objectives)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from procmem.distill import Example, Objective


def check_objective(objective: Objective, model: Any, batch: Sequence[Example]) -> None:
    """One step's contract: a finite scalar loss that reaches the trainable (LoRA) weights, honest token
    counts, and state that survives a checkpoint round trip."""
    assert isinstance(objective, Objective) and objective.name
    model.train()
    model.zero_grad()
    out = objective.loss(model, batch)
    assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), out.loss
    assert out.tokens > 0 and out.processed_tokens >= out.tokens, (out.tokens, out.processed_tokens)
    out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and torch.any(p.grad != 0) for p in trainable)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    objective.after_step(model)
    state = objective.state_dict()
    objective.load_state_dict(state)
    assert objective.state_dict().keys() == state.keys()
    model.zero_grad()
