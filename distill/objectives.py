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

What a step costs, and what keeps it down (none of it changes the loss or its gradient; tests pin each against
the plain computation): the student samples on its own KV cache, a finished rollout leaving the batch, the LM
head only at each row's last position, a token drawn by inverse CDF (:func:`_draw`); the teacher and student
forwards run their rows in groups of similar length, and the teacher runs a prompt head that several rows share
(memory advice) once (:func:`_plan_groups`); logits exist only at answer positions, and the reverse KL works on
128 of those rows at a time, its gradient computed as it goes (:class:`_ChunkedReverseKl`), never the ``N x V``
logits whole. ``eval/bench/bench_distill.py --objective self-distill`` measures it against TRL's GKD.

**mixed** is ``sft_weight * sft + self_distill_weight * self-distill`` over a batch that mixes
trace examples and problem contexts.

Sequences are right-padded, so position ids are plain ``0..T-1`` for every row, as at inference.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol, cast, runtime_checkable

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


def _head(lm: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head (and the model's final logit soft-capping, if any) applied to hidden states."""
    logits = lm.get_output_embeddings()(hidden)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


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
    return _head(lm, hidden[predict_mask.to(device)])


# A forward call costs about this many tokens' worth of work on top of its tokens (a guess that only steers how
# rows are grouped: fewer, wider groups against more, tighter ones).
_CALL_COST_TOKENS = 32
_MIN_SHARED_PREFIX = 8


@dataclass(frozen=True)
class _Group:
    rows: tuple[int, ...]
    prefix: int
    """Leading tokens every row of the group shares, run once (0: none)."""


def _plan_groups(rows: Sequence[Sequence[int]], first_predict: Sequence[int], *, share_prefixes: bool) -> list[_Group]:
    """Split right-padded rows into forward calls that waste little on padding: rows of similar length together
    (a dynamic programme over the rows sorted by length, each call costing its rows x its longest row plus
    :data:`_CALL_COST_TOKENS`); with ``share_prefixes``, also groups of rows that start with the same tokens, whose
    common prefix (never past a row's first predicted position) runs once. The cheaper plan wins."""
    lengths = [len(r) for r in rows]
    by_length = sorted(range(len(rows)), key=lambda i: -lengths[i])
    best = _split(by_length, lengths, lambda i, j: 0)
    if share_prefixes and len(rows) > 1:
        order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
        adjacent = [_common(rows[a], rows[b]) for a, b in pairwise(order)]

        def prefix(i: int, j: int) -> int:  # the prefix rows order[i..j] share (a sorted range's: its least adjacent)
            if i == j:
                return 0
            shared = min(min(adjacent[i:j]), *(first_predict[order[k]] for k in range(i, j + 1)))
            return shared if shared >= _MIN_SHARED_PREFIX else 0

        shared = _split(order, lengths, prefix)
        if shared[0] < best[0]:
            best = shared
    return best[1]


def _split(order: list[int], lengths: Sequence[int], prefix: Any) -> tuple[int, list[_Group]]:
    """The cheapest split of ``order`` into contiguous groups, ``prefix(i, j)`` giving what ``order[i..j]`` share."""
    n = len(order)
    cost = [0] * (n + 1)
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        cost[j] = -1
        longest = 0
        for i in range(j - 1, -1, -1):
            longest = max(longest, lengths[order[i]])
            shared = prefix(i, j - 1)
            total = cost[i] + _CALL_COST_TOKENS + (j - i) * (longest - shared) + (shared + _CALL_COST_TOKENS
                                                                                  if shared else 0)
            if cost[j] < 0 or total < cost[j]:
                cost[j], start[j] = total, i
    groups: list[_Group] = []
    j = n
    while j > 0:
        groups.append(_Group(tuple(order[start[j]: j]), prefix(start[j], j - 1)))
        j = start[j]
    return cost[n], groups[::-1]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _new_cache(lm: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=lm.config)


def _cache_kwarg(body: nn.Module) -> str:
    """``cache`` (transformers >= 5.x) or ``past_key_values`` (before): the body's name for its KV cache."""
    import inspect

    return "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"


def _completion_hidden(model: nn.Module, packed: _Packed, *, share_prefixes: bool = False) -> torch.Tensor:
    """The body's final hidden states ``(N, H)`` at ``packed.predict_mask``, in its row-major order: the input the
    LM head turns into :func:`completion_logits`.

    Rows run in groups of similar length (see :func:`_plan_groups`), so little is spent on padding; every row's
    result is the one a single batch would give (rows never attend to each other). ``share_prefixes`` (no-grad
    passes only: the teacher) also runs a prompt prefix that several rows share once, and the rest of those rows
    on its KV cache.
    """
    lm = _causal_lm(model)
    body = getattr(lm, lm.base_model_prefix)
    device = lm.device
    lengths = packed.attention_mask.sum(1).tolist()
    rows = [packed.input_ids[r, : lengths[r]].tolist() for r in range(len(lengths))]
    first_predict = packed.predict_mask.int().argmax(1).tolist()
    groups = _plan_groups(rows, first_predict, share_prefixes=share_prefixes)
    pieces: dict[int, torch.Tensor] = {}
    for group in groups:
        index = torch.tensor(group.rows)
        width = max(lengths[r] for r in group.rows)
        ids = packed.input_ids[index, group.prefix: width]
        mask = packed.attention_mask[index, :width]
        predict = packed.predict_mask[index, group.prefix: width]
        kwargs: dict[str, Any] = {"use_cache": False}
        if group.prefix:
            cache = _new_cache(lm)
            body(input_ids=packed.input_ids[index[:1], : group.prefix].to(device),
                 attention_mask=mask[:1, : group.prefix].to(device), use_cache=True, **{_cache_kwarg(body): cache})
            cache.batch_repeat_interleave(len(group.rows))
            kwargs = {"use_cache": True, _cache_kwarg(body): cache}
        hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).last_hidden_state
        selected = hidden[predict.to(device)]
        for row, part in zip(group.rows, selected.split(predict.sum(1).tolist()), strict=True):
            pieces[row] = part
    return torch.cat([pieces[r] for r in range(len(rows))])


# ------------------------------------------------------------------------------------------------- sft


class SftObjective:
    """Completion-only cross-entropy on verified traces (logits at completion positions only)."""

    name = "sft"

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self._enc = _Encoder(tokenizer, max_len)

    def examples(self, build: TraceBuild) -> list[Example]:
        return [t.example(t.completion) for t in build.kept if t.status == "kept"]

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
            teacher_hidden = _completion_hidden(model, teacher, share_prefixes=True)
        student_hidden = _completion_hidden(model, student)
        loss = _hidden_divergence(_causal_lm(model), student_hidden, teacher_hidden, self.settings)
        return ObjectiveLoss(loss, int(student.targets.numel()), student.processed_tokens)

    @torch.no_grad()
    def sample(self, model: nn.Module, prompts: Sequence[list[int]], *, stops: Sequence[Sequence[str]] | None = None,
               limits: Sequence[int] | None = None) -> list[list[int]]:
        """Sample one completion per prompt from the current student (temperature and top-p from the
        settings); each ends after the token that completes its stop string (default: the one-line
        answer's newline), at EOS, or at its token limit (default ``max_new_tokens``).

        The same draw as ``generate(do_sample=True, top_k=0)`` then a cut at the stop, done by hand on the KV
        cache so that a finished row leaves the batch, the LM head runs only at each row's last position, and
        a token is drawn by inverse CDF (one uniform per row, not ``multinomial``'s one per vocabulary entry).
        """
        stops = stops or [(ANSWER_STOP,)] * len(prompts)
        limits = limits or [self.settings.max_new_tokens] * len(prompts)
        was_training = model.training
        model.eval()
        try:
            return self._sample(model, prompts, stops, limits)
        finally:
            model.train(was_training)

    def _sample(self, model: nn.Module, prompts: Sequence[list[int]], stops: Sequence[Sequence[str]],
                limits: Sequence[int]) -> list[list[int]]:
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        warpers = LogitsProcessorList()
        if self.settings.rollout_temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.settings.rollout_temperature))
        if self.settings.rollout_top_p < 1.0:
            warpers.append(TopPLogitsWarper(self.settings.rollout_top_p))
        lm = _causal_lm(model)
        body = getattr(lm, lm.base_model_prefix)
        device = lm.device
        width = max(len(p) for p in prompts)
        pad = self._enc.pad_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding: every prompt starts at position 0
        cache = _new_cache(lm)
        hidden = body(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                      **{_cache_kwarg(body): cache}).last_hidden_state[:, -1].contiguous()
        out: list[list[int]] = [[] for _ in prompts]
        active = list(range(len(prompts)))
        while active:
            tokens = _draw(warpers(cast(torch.LongTensor, input_ids), _decode_head(lm, hidden).float()))
            keep = []
            for slot, (row, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
                out[row].append(token)
                if len(out[row]) < limits[row] and not self._ends(out[row], stops[row]):
                    keep.append(slot)
            if len(keep) < len(active):
                if not keep:
                    break
                index = torch.tensor(keep, device=device)
                cache.reorder_cache(index)
                attention, positions, tokens = attention[index], positions[index], tokens[index]
                active = [active[k] for k in keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            positions = positions[:, -1:] + 1
            hidden = body(input_ids=tokens[:, None], attention_mask=attention, position_ids=positions,
                          use_cache=True, **{_cache_kwarg(body): cache}).last_hidden_state[:, -1].contiguous()
        return out

    def _ends(self, ids: list[int], stops: Sequence[str]) -> bool:
        """Whether a rollout ends with its last token: EOS, or the token that completes a stop string."""
        if ids[-1] == self._tokenizer.eos_token_id:
            return True
        window = max((len(s) for s in stops), default=0) + 1  # a stop of n characters spans at most n tokens
        return bool(stops) and any(s in self._tokenizer.decode(ids[-window:]) for s in stops if s)

    def _cut(self, ids: list[int], stops: Sequence[str]) -> list[int]:
        for index in range(len(ids)):
            if self._ends(ids[: index + 1], stops):
                return ids[: index + 1]
        return ids or [self._tokenizer.eos_token_id]

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


_DECODE_HEAD_ROWS = 1024


def _decode_head(lm: Any, hidden: torch.Tensor) -> torch.Tensor:
    """:func:`_head` for a decode step's few rows. On the CPU a plain head runs in slices of
    :data:`_DECODE_HEAD_ROWS` vocabulary entries: for a product this skinny the BLAS packs the whole 262k x 640
    weight on every call, where a slice's packing stays in cache (~30% faster per step on our 2-core machine)."""
    head = lm.get_output_embeddings()
    if hidden.device.type != "cpu" or type(head) is not nn.Linear or head.bias is not None:
        return _head(lm, hidden)
    logits = torch.cat([F.linear(hidden, rows) for rows in head.weight.split(_DECODE_HEAD_ROWS)], dim=1)
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


_DRAW_BLOCK = 1024


def _draw(scores: torch.Tensor) -> torch.Tensor:
    """One token per row from ``softmax(scores)``, by inverse CDF in two levels: the row's mass in blocks of
    :data:`_DRAW_BLOCK` entries, a block drawn by its cumulative mass (float64), then the token within it. The same
    distribution as ``multinomial`` (float32 weights), but one uniform per row instead of one exponential per
    vocabulary entry, and no cumulative sum over the whole vocabulary."""
    rows, vocab = scores.shape
    weights = (scores - scores.amax(-1, keepdim=True)).exp_()  # unnormalised: the draw scales by the total
    if vocab % _DRAW_BLOCK:
        weights = F.pad(weights, (0, _DRAW_BLOCK - vocab % _DRAW_BLOCK))
    blocks = weights.view(rows, -1, _DRAW_BLOCK)
    mass = blocks.sum(-1).double()
    cdf = mass.cumsum(-1)
    draw = torch.rand(rows, 1, dtype=torch.float64, device=scores.device) * cdf[:, -1:]
    block = torch.searchsorted(cdf, draw, right=True).clamp_(max=cdf.size(-1) - 1)
    inner = blocks[torch.arange(rows, device=scores.device), block[:, 0]].double().cumsum(-1)
    rest = (draw - (cdf.gather(1, block) - mass.gather(1, block))).clamp_(min=0)
    rest = torch.minimum(rest, torch.nextafter(inner[:, -1:], torch.zeros_like(inner[:, -1:])))  # rounding
    index = torch.searchsorted(inner, rest, right=True).clamp_(max=_DRAW_BLOCK - 1)
    return (block * _DRAW_BLOCK + index).squeeze(1)


def _hidden_divergence(lm: Any, student: torch.Tensor, teacher: torch.Tensor,
                       settings: SelfDistillSettings) -> torch.Tensor:
    """Mean per-token divergence between the logits the LM head gives ``(N, H)`` student and teacher hidden states.

    The reverse KL with a frozen, bias-free head goes through :class:`_ChunkedReverseKl`, which never holds more
    than :data:`_KL_ROWS` rows of ``V`` logits; anything else computes the logits and :func:`_divergence`."""
    head = lm.get_output_embeddings()
    if settings.divergence == "reverse_kl" and type(head) is nn.Linear and head.bias is None \
            and not head.weight.requires_grad:
        softcap = getattr(lm.config, "final_logit_softcapping", None)
        return _ChunkedReverseKl.apply(student, teacher.detach(), head.weight, softcap)
    return _divergence(_head(lm, student), _head(lm, teacher), settings)


_KL_ROWS = 128
"""Rows of logits :class:`_ChunkedReverseKl` works on at a time (128 x 262k fp32 logits: 134 MB a tensor)."""


class _ChunkedReverseKl(torch.autograd.Function):
    """``mean_n KL(softmax(s_n) || softmax(t_n))`` with ``s = head(student)``, ``t = head(teacher)``, in chunks of
    rows: the gradient with respect to the student's hidden states is computed in the forward pass,
    ``dKL/ds = p * (log p - log q - KL)`` (times the soft-capping's derivative) then ``@ W``, so neither the
    ``N x V`` logits nor autograd's intermediates over them are ever held whole. Equal to
    ``_divergence(head(student), head(teacher))`` up to float rounding (tests pin it)."""

    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor,
                softcap: float | None) -> torch.Tensor:
        n = student.size(0)
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float64, device=student.device)
        for start in range(0, n, _KL_ROWS):
            stop = min(start + _KL_ROWS, n)
            s = F.linear(student[start:stop], weight).float()
            t = F.linear(teacher[start:stop], weight).float()
            if softcap is not None:
                s = torch.tanh(s / softcap) * softcap
                t = torch.tanh(t / softcap) * softcap
            diff = F.log_softmax(s, dim=-1)
            p = diff.exp()
            diff.sub_(F.log_softmax(t, dim=-1))  # log p - log q
            kl = torch.bmm(p.unsqueeze(1), diff.unsqueeze(2)).view(-1)  # per-row dot products, no N x V temporary
            total += kl.sum(dtype=torch.float64)
            if grad is not None:
                g = p.mul_(diff.sub_(kl[:, None])).div_(n)
                if softcap is not None:
                    g.mul_(1 - (s / softcap) ** 2)
                grad[start:stop] = (g.to(weight.dtype) @ weight).to(grad.dtype)
        ctx.save_for_backward(grad)
        return (total / n).to(torch.float32)

    @staticmethod
    def backward(ctx: Any, *grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output[0] if grad is not None else None), None, None, None


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
