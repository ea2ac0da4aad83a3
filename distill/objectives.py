"""Training objectives: ``sft``, ``self-distill`` and ``mixed``, behind the :class:`Objective` protocol.

**sft** is completion-only cross-entropy on verified corrected traces (memory-free prompt ->
verified answer). The base model's vocabulary (262k) makes the LM head the main cost, so the body
runs once to get hidden states, the rows that predict completion tokens are gathered, and the head is
applied to those rows only: ``N_completion x V`` logits instead of ``B x T x V``.

**self-distill** is the PMD/SDPO mechanism, token-level distillation on the student's own rollouts:

1. the student (adapter on, memory-free prompt) samples a completion ``y`` for each problem;
2. ``y``'s token ids are appended to two prompts: the memory-free student prompt and the teacher
   prompt (retrieved memory + verifier feedback). The *same token ids* are appended, so the answer
   tokens align one to one by construction (no re-tokenisation of ``y`` in either context);
3. the teacher scores ``y`` with gradients stopped: by default the frozen base model (peft
   ``disable_adapter()``), or, with ``teacher = "ema"``, an exponential moving average of the adapter;
4. the loss is a per-token divergence on ``y``'s tokens only. The default is the reverse KL
   ``KL(student || teacher)`` over the full vocabulary (mode-seeking, the on-policy distillation
   choice; exact, and affordable because logits exist only at answer positions). ``divergence =
   "jsd"`` instead uses Jensen-Shannon over the teacher's top-k tokens plus one tail bucket holding
   the remaining mass, which is bounded and less sensitive to the teacher's long tail.

**mixed** is ``sft_weight * sft + self_distill_weight * self-distill`` over a batch that mixes
trace examples and problem contexts.

Sequences are right-padded, so position ids are plain ``0..T-1`` for every row, as at inference.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from procmem.core import ProcmemError
from procmem.core.prompts import ANSWER_STOP
from procmem.distill.config import DistillConfig, MixedSettings, ObjectiveName, SelfDistillSettings
from procmem.distill.traces import Example, TraceBuild

__all__ = [
    "Example",
    "ForwardingObjective",
    "MixedObjective",
    "Objective",
    "ObjectiveLoss",
    "SelfDistillObjective",
    "SftObjective",
    "completion_logits",
    "make_objective",
]


@dataclass(frozen=True)
class ObjectiveLoss:
    """A step's differentiable loss and how many tokens it covered."""

    loss: torch.Tensor
    tokens: int
    """Answer tokens the loss is averaged over."""
    processed_tokens: int
    """All tokens the model ran over with gradients (prompts included): the throughput count."""


@runtime_checkable
class Objective(Protocol):
    """A training objective. The trainer calls ``loss`` per step and ``after_step`` after each update;
    ``state_dict``/``load_state_dict`` carry any objective state (e.g. an EMA teacher) in checkpoints."""

    @property
    def name(self) -> str: ...

    def examples(self, build: TraceBuild) -> list[Example]: ...

    def loss(self, model: nn.Module, batch: Sequence[Example]) -> ObjectiveLoss: ...

    def after_step(self, model: nn.Module) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_objective(name: ObjectiveName, tokenizer: Any, config: DistillConfig) -> Objective:
    """The objective called ``name`` (``sft``, ``self-distill`` or ``mixed``)."""
    max_len = config.train.max_seq_len
    if name == "sft":
        return SftObjective(tokenizer, max_len)
    if name == "self-distill":
        return SelfDistillObjective(tokenizer, max_len, config.self_distill)
    if name == "mixed":
        return MixedObjective(tokenizer, max_len, config.self_distill, config.mixed)
    raise ProcmemError(f"unknown objective {name!r}", where="objective", fix="use sft, self-distill or mixed")


# ---------------------------------------------------------------------------------------------- tokens


class _Encoder:
    """Tokenises prompts (with the tokenizer's special tokens, as at inference) and completions (without),
    and right-pads them into a batch. Encodings are cached: examples repeat every epoch."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cache: dict[tuple[str, bool], list[int]] = {}
        self._warned = False

    def ids(self, text: str, *, special: bool) -> list[int]:
        key = (text, special)
        if key not in self._cache:
            self._cache[key] = list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        return self._cache[key]

    def pack(self, prompts: Sequence[list[int]], completions: Sequence[list[int]]) -> _Packed:
        rows: list[tuple[list[int], int]] = []
        for prompt, completion in zip(prompts, completions, strict=True):
            completion = completion[: self.max_len - 1]
            room = self.max_len - len(completion)
            if len(prompt) > room and not self._warned:
                self._warned = True
                warnings.warn(f"a {len(prompt)}-token prompt lost its head to fit train.max_seq_len="
                              f"{self.max_len}; a teacher prompt loses its memory that way: raise it", stacklevel=2)
            rows.append((prompt[-room:] + completion, min(len(prompt), room)))
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        predict = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (ids, n_prompt) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            predict[row, n_prompt - 1: len(ids) - 1] = True  # hidden state t predicts token t + 1
        targets = input_ids[:, 1:][predict[:, :-1]]
        return _Packed(input_ids, attention, predict, targets)


@dataclass(frozen=True)
class _Packed:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    predict_mask: torch.Tensor
    """True at positions whose next token is a completion token."""
    targets: torch.Tensor
    """The completion tokens, in the row-major order of ``predict_mask``."""

    @property
    def processed_tokens(self) -> int:
        return int(self.attention_mask.sum())


def _causal_lm(model: nn.Module) -> Any:
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def completion_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      predict_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, V)`` at the ``N`` positions of ``predict_mask`` only.

    Runs the model body for hidden states, gathers the selected rows, and applies the LM head (and
    the model's final logit soft-capping, if any) to those rows alone.
    """
    lm = _causal_lm(model)
    body = getattr(lm, lm.base_model_prefix)
    device = lm.device  # the batches are built on the CPU; the model may be on a GPU (accelerate)
    hidden = body(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                  use_cache=False).last_hidden_state
    logits = lm.get_output_embeddings()(hidden[predict_mask.to(device)])
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


# ------------------------------------------------------------------------------------------------- sft


class SftObjective:
    """Completion-only cross-entropy on verified traces (logits at completion positions only)."""

    name = "sft"

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self._enc = _Encoder(tokenizer, max_len)

    def examples(self, build: TraceBuild) -> list[Example]:
        """The verified traces and the rehearsal examples (``build.replay``)."""
        return [t.example(t.completion) for t in (*build.kept, *build.replay) if t.status in ("kept", "replay")]

    def loss(self, model: nn.Module, batch: Sequence[Example]) -> ObjectiveLoss:
        items = [e for e in batch if e.completion is not None]
        if not items:
            raise ValueError("sft needs examples with a completion")
        packed = self._enc.pack([self._enc.ids(e.prompt, special=True) for e in items],
                                [self._enc.ids(e.completion or "", special=False) for e in items])
        logits = completion_logits(model, packed.input_ids, packed.attention_mask, packed.predict_mask)
        loss = F.cross_entropy(logits, packed.targets.to(logits.device))
        return ObjectiveLoss(loss, int(packed.targets.numel()), packed.processed_tokens)

    def after_step(self, model: nn.Module) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# ---------------------------------------------------------------------------------------- self-distill


class SelfDistillObjective:
    """Token-level distillation of the memory-conditioned teacher into the memory-free student, on the
    student's own sampled rollouts (see the module docstring)."""

    name = "self-distill"

    def __init__(self, tokenizer: Any, max_len: int, settings: SelfDistillSettings) -> None:
        self._enc = _Encoder(tokenizer, max_len)
        self._tokenizer = tokenizer
        self.settings = settings
        self._ema: dict[str, torch.Tensor] = {}

    def examples(self, build: TraceBuild) -> list[Example]:
        return [c.example() for c in build.contexts]

    def loss(self, model: nn.Module, batch: Sequence[Example]) -> ObjectiveLoss:
        if not batch:
            raise ValueError("self-distill needs at least one example")
        limits = [e.max_tokens or self.settings.max_new_tokens for e in batch]
        rollouts = self.sample(model, [self._enc.ids(e.prompt, special=True) for e in batch],
                               stops=[e.stop for e in batch], limits=limits)
        return self.rollout_loss(model, batch, rollouts)

    def rollout_loss(self, model: nn.Module, batch: Sequence[Example], rollouts: Sequence[list[int]]) -> ObjectiveLoss:
        """The divergence on given answer token ids (one list per example), appended to both prompts."""
        student = self._enc.pack([self._enc.ids(e.prompt, special=True) for e in batch], rollouts)
        teacher = self._enc.pack([self._enc.ids(e.teacher_prompt, special=True) for e in batch], rollouts)
        if not torch.equal(student.targets, teacher.targets):  # only if truncation cut them differently
            raise ValueError("teacher and student answer tokens are misaligned; raise train.max_seq_len")
        with torch.no_grad(), self._teacher(model):
            teacher_logits = completion_logits(model, teacher.input_ids, teacher.attention_mask,
                                               teacher.predict_mask)
        student_logits = completion_logits(model, student.input_ids, student.attention_mask, student.predict_mask)
        loss = _divergence(student_logits, teacher_logits, self.settings)
        return ObjectiveLoss(loss, int(student.targets.numel()), student.processed_tokens)

    @torch.no_grad()
    def sample(self, model: nn.Module, prompts: Sequence[list[int]], *, stops: Sequence[Sequence[str]] | None = None,
               limits: Sequence[int] | None = None) -> list[list[int]]:
        """Sample one completion per prompt from the current student (temperature and top-p from the
        settings); each is cut after the token that completes its stop string (default: the one-line
        answer's newline), at EOS, or at its token limit (default ``max_new_tokens``)."""
        stops = stops or [(ANSWER_STOP,)] * len(prompts)
        limits = limits or [self.settings.max_new_tokens] * len(prompts)
        was_training = model.training
        model.eval()
        try:
            width = max(len(p) for p in prompts)
            pad = self._enc.pad_id
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            device = _causal_lm(model).device
            out = model.generate(  # type: ignore[operator]
                input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                temperature=self.settings.rollout_temperature, top_p=self.settings.rollout_top_p, top_k=0,
                max_new_tokens=max(limits), pad_token_id=pad, eos_token_id=self._tokenizer.eos_token_id,
            )
        finally:
            model.train(was_training)
        return [self._cut(row.tolist()[:limit], stop) for row, stop, limit in zip(out[:, width:], stops, limits,
                                                                                  strict=True)]

    def _cut(self, ids: list[int], stops: Sequence[str]) -> list[int]:
        eos = self._tokenizer.eos_token_id
        window = max((len(s) for s in stops), default=0) + 1  # a stop of n characters spans at most n tokens
        for index, token in enumerate(ids):
            if token == eos:
                return ids[: index + 1]
            if stops and any(s in self._tokenizer.decode(ids[max(0, index + 1 - window): index + 1])
                             for s in stops if s):
                return ids[: index + 1]
        return ids or [eos]

    @contextlib.contextmanager
    def _teacher(self, model: nn.Module) -> Iterator[None]:
        """Turn ``model`` into the teacher for a no-grad forward: eval mode (no dropout), and either the
        adapter disabled (frozen base) or the EMA weights swapped in."""
        was_training = model.training
        model.eval()
        try:
            if self.settings.teacher == "base":
                with model.disable_adapter():  # type: ignore[operator]
                    yield
            else:
                with self._ema_weights(model):
                    yield
        finally:
            model.train(was_training)

    @contextlib.contextmanager
    def _ema_weights(self, model: nn.Module) -> Iterator[None]:
        params = dict(_trainable(model))
        if not self._ema:
            self.after_step(model)
        backup = {name: p.detach().clone() for name, p in params.items()}
        try:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self._ema[name])
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])

    def after_step(self, model: nn.Module) -> None:
        if self.settings.teacher != "ema":
            return
        decay = self.settings.ema_decay
        for name, p in _trainable(model):
            if name not in self._ema:
                self._ema[name] = p.detach().clone()
            else:
                self._ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {k: v.clone() for k, v in self._ema.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema = {k: v.clone() for k, v in state.get("ema", {}).items()}


def _trainable(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


def _divergence(student: torch.Tensor, teacher: torch.Tensor, settings: SelfDistillSettings) -> torch.Tensor:
    """Mean per-token divergence between ``(N, V)`` student and teacher logits."""
    s_logp = F.log_softmax(student.float(), dim=-1)
    t_logp = F.log_softmax(teacher.float(), dim=-1)
    if settings.divergence == "reverse_kl":
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1).mean()
    top = t_logp.topk(min(settings.top_k, t_logp.size(-1)), dim=-1).indices
    p = _with_tail(t_logp.gather(-1, top).exp())
    q = _with_tail(s_logp.gather(-1, top).exp())
    m = 0.5 * (p + q)
    jsd = 0.5 * (p * (p.log() - m.log())).sum(-1) + 0.5 * (q * (q.log() - m.log())).sum(-1)
    return jsd.mean()


def _with_tail(top_probs: torch.Tensor) -> torch.Tensor:
    tail = (1.0 - top_probs.sum(-1, keepdim=True)).clamp(min=1e-8)
    return torch.cat([top_probs.clamp(min=1e-12), tail], dim=-1)


# ----------------------------------------------------------------------------------------------- mixed


class MixedObjective:
    """``sft_weight * sft + self_distill_weight * self-distill`` on the trace and problem examples of a batch."""

    name = "mixed"

    def __init__(self, tokenizer: Any, max_len: int, settings: SelfDistillSettings, weights: MixedSettings) -> None:
        self.sft = SftObjective(tokenizer, max_len)
        self.self_distill = SelfDistillObjective(tokenizer, max_len, settings)
        self.weights = weights

    def examples(self, build: TraceBuild) -> list[Example]:
        # Only kinds with a positive weight, so that every batch has something to train on.
        sft = self.sft.examples(build) if self.weights.sft_weight > 0 else []
        problems = self.self_distill.examples(build) if self.weights.self_distill_weight > 0 else []
        return sft + problems

    def loss(self, model: nn.Module, batch: Sequence[Example]) -> ObjectiveLoss:
        traces = [e for e in batch if e.completion is not None]
        problems = [e for e in batch if e.completion is None]
        parts: list[tuple[float, ObjectiveLoss]] = []
        # Self-distillation first: an EMA teacher swaps the adapter's weights in place for its forward pass, which
        # would invalidate a graph the SFT part had already built over those weights.
        if problems:
            parts.append((self.weights.self_distill_weight, self.self_distill.loss(model, problems)))
        if traces:
            parts.append((self.weights.sft_weight, self.sft.loss(model, traces)))
        if not parts:
            raise ValueError("mixed batch has nothing to train on")
        total = sum((weight * part.loss for weight, part in parts), torch.zeros(()))
        return ObjectiveLoss(total, sum(p.tokens for _, p in parts), sum(p.processed_tokens for _, p in parts))

    def after_step(self, model: nn.Module) -> None:
        self.self_distill.after_step(model)

    def state_dict(self) -> dict[str, Any]:
        return self.self_distill.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.self_distill.load_state_dict(state)


# ------------------------------------------------------------------------------------------ forwarding


class ForwardingObjective:
    """An objective that hands every call to ``inner``. Subclass it to change one call (a benchmark's fixed
    examples, a test's slowed or crashing loss) while the rest stays the real objective."""

    def __init__(self, inner: Objective) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    def examples(self, build: TraceBuild) -> list[Example]:
        return self.inner.examples(build)

    def loss(self, model: nn.Module, batch: Sequence[Example]) -> ObjectiveLoss:
        return self.inner.loss(model, batch)

    def after_step(self, model: nn.Module) -> None:
        self.inner.after_step(model)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
