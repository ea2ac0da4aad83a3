"""The training objectives on the real tiny model: completion-only logits, sft, self-distill, mixed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import torch

from procmem.distill import DistillConfig, Example, Objective, make_objective
from procmem.distill.objectives import (
    ForwardingObjective,
    MixedObjective,
    ObjectiveLoss,
    SelfDistillObjective,
    SftObjective,
    completion_logits,
)
from procmem.testing import ObjectiveConformance

STUDENT = "Question: What is 2 + 3?\nAnswer:"
TEACHER = "Question: What is 1 + 1?\nAnswer: 2\n\nQuestion: What is 2 + 3?\nAnswer:"
TRACES = [
    Example(task_id="a", prompt=STUDENT, teacher_prompt=TEACHER, completion=" 5\n"),
    Example(task_id="b", prompt="Question: Spell cat backwards.\nAnswer:",
            teacher_prompt="Question: Spell dog backwards.\nAnswer: god\n\nQuestion: Spell cat backwards.\nAnswer:",
            completion=" tac\n"),
]
PROBLEMS = [replace(e, completion=None) for e in TRACES]


def _config(base: DistillConfig, **self_distill: Any) -> DistillConfig:
    return base.model_copy(update={"self_distill": base.self_distill.model_copy(update=self_distill)})


def _train(model: Any, step: Any, steps: int = 12, lr: float = 1e-2) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = step()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def test_every_objective_implements_the_protocol(lora_model: tuple[Any, Any], tiny_config: DistillConfig) -> None:
    _, tokenizer = lora_model
    for name in ("sft", "self-distill", "mixed"):
        objective = make_objective(name, tokenizer, tiny_config)
        assert isinstance(objective, Objective) and objective.name == name


def test_completion_logits_equal_the_full_forward_at_the_selected_positions(lora_model: tuple[Any, Any]) -> None:
    model, tokenizer = lora_model
    torch.manual_seed(0)
    for p in model.parameters():  # make the adapter non-trivial so LoRA is part of what is compared
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    ids = torch.tensor([tokenizer("Question: hi\nAnswer: yes\n")["input_ids"]] * 2)
    ids[1, -3:] = tokenizer.pad_token_id
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    predict = torch.zeros_like(ids, dtype=torch.bool)
    predict[0, 5:9] = True
    predict[1, 2:4] = True
    model.eval()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        picked = completion_logits(model, ids, mask, predict)
    assert picked.shape == (6, full.shape[-1])
    torch.testing.assert_close(picked, full[predict], rtol=1e-4, atol=1e-4)


def test_sft_trains_on_completion_tokens_only(lora_model: tuple[Any, Any]) -> None:
    model, tokenizer = lora_model
    sft = SftObjective(tokenizer, max_len=128)
    out = sft.loss(model, TRACES)
    n_completion = sum(len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in TRACES)
    assert out.tokens == n_completion
    n_all = sum(len(tokenizer(e.prompt)["input_ids"]) for e in TRACES) + n_completion
    assert out.processed_tokens == n_all
    # A longer prompt changes what the model reads, not how many tokens the loss covers.
    longer = [replace(e, prompt="Context.\n" + e.prompt) for e in TRACES]
    assert sft.loss(model, longer).tokens == n_completion


def test_sft_lowers_its_loss_on_a_fixed_batch(lora_model: tuple[Any, Any]) -> None:
    model, tokenizer = lora_model
    sft = SftObjective(tokenizer, max_len=128)
    model.train()
    losses = _train(model, lambda: sft.loss(model, TRACES).loss)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_self_distill_lowers_its_loss_on_fixed_rollouts(
    lora_model: tuple[Any, Any], tiny_config: DistillConfig, divergence: str
) -> None:
    model, tokenizer = lora_model
    objective = SelfDistillObjective(tokenizer, 128, _config(tiny_config, divergence=divergence).self_distill)
    rollouts = [tokenizer(" 7\n", add_special_tokens=False)["input_ids"],
                tokenizer(" abc\n", add_special_tokens=False)["input_ids"]]
    model.train()
    losses = _train(model, lambda: objective.rollout_loss(model, PROBLEMS, rollouts).loss)
    assert losses[0] > 0
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("teacher", ["base", "ema"])
def test_self_distill_is_zero_when_the_teacher_sees_what_the_student_sees(
    lora_model: tuple[Any, Any], tiny_config: DistillConfig, teacher: str
) -> None:
    """A fresh adapter is the identity, so the student equals the frozen base (and the EMA teacher)."""
    model, tokenizer = lora_model
    objective = SelfDistillObjective(tokenizer, 128, _config(tiny_config, teacher=teacher).self_distill)
    same = [replace(e, teacher_prompt=e.prompt) for e in PROBLEMS]
    rollouts = [tokenizer(" 5\n", add_special_tokens=False)["input_ids"]] * 2
    assert float(objective.rollout_loss(model, same, rollouts).loss) == pytest.approx(0.0, abs=1e-5)
    assert float(objective.rollout_loss(model, PROBLEMS, rollouts).loss) > 1e-4


def test_self_distill_teacher_gets_no_gradient_and_the_base_stays_frozen(
    lora_model: tuple[Any, Any], tiny_config: DistillConfig
) -> None:
    model, tokenizer = lora_model
    objective = SelfDistillObjective(tokenizer, 128, tiny_config.self_distill)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    rollouts = [tokenizer(" 1\n", add_special_tokens=False)["input_ids"]] * 2
    model.train()
    _train(model, lambda: objective.rollout_loss(model, PROBLEMS, rollouts).loss, steps=3)
    assert model.training
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen[name]), name
    # The teacher is the untouched base, not the trained student: on the student's own context the two
    # now differ, so the loss is no longer zero (it would be if the teacher ran with the adapter).
    same = [replace(e, teacher_prompt=e.prompt) for e in PROBLEMS]
    assert float(objective.rollout_loss(model, same, rollouts).loss) > 1e-4


def test_self_distill_loss_and_gradient_follow_the_teachers_context(
    lora_model: tuple[Any, Any], tiny_config: DistillConfig
) -> None:
    """Teacher (base) and student (base + a non-trivial adapter) differ; changing only what the teacher
    sees changes the loss and the student's gradient."""
    model, tokenizer = lora_model
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    objective = SelfDistillObjective(tokenizer, 128, tiny_config.self_distill)
    rollouts = [tokenizer(" 5\n", add_special_tokens=False)["input_ids"]] * 2
    same = [replace(e, teacher_prompt=e.prompt) for e in PROBLEMS]
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grad(problems: list[Example]) -> tuple[float, torch.Tensor]:
        model.zero_grad()
        loss = objective.rollout_loss(model, problems, rollouts).loss
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in trainable if p.grad is not None])
        return float(loss.detach()), grad

    loss_same, grad_same = loss_and_grad(same)
    loss_ctx, grad_ctx = loss_and_grad(PROBLEMS)
    assert loss_same > 1e-4 and loss_ctx > 1e-4  # the teacher is not the student, whatever its context
    assert abs(loss_ctx - loss_same) > 1e-3 * max(loss_same, loss_ctx), (loss_same, loss_ctx)
    assert grad_same.norm() > 0 and grad_ctx.norm() > 0
    assert (grad_ctx - grad_same).norm() > 1e-3 * grad_same.norm()
    # Deterministic: the same context gives the same loss and gradient again.
    again, grad_again = loss_and_grad(same)
    assert again == pytest.approx(loss_same, rel=1e-5)
    torch.testing.assert_close(grad_again, grad_same)


def test_ema_teacher_follows_the_adapter_slowly(lora_model: tuple[Any, Any], tiny_config: DistillConfig) -> None:
    model, tokenizer = lora_model
    settings = _config(tiny_config, teacher="ema", ema_decay=0.5).self_distill
    objective = SelfDistillObjective(tokenizer, 128, settings)
    name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    objective.after_step(model)
    start = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    objective.after_step(model)
    torch.testing.assert_close(objective.state_dict()["ema"][name], start + 0.5)
    restored = SelfDistillObjective(tokenizer, 128, settings)
    restored.load_state_dict(objective.state_dict())
    torch.testing.assert_close(restored.state_dict()["ema"][name], start + 0.5)


def test_self_distill_rollouts_end_at_the_answer_stop(lora_model: tuple[Any, Any], tiny_config: DistillConfig) -> None:
    model, tokenizer = lora_model
    objective = SelfDistillObjective(tokenizer, 128, tiny_config.self_distill)
    torch.manual_seed(0)
    rollouts = objective.sample(model, [tokenizer(e.prompt)["input_ids"] for e in PROBLEMS])
    assert len(rollouts) == 2
    for ids in rollouts:
        assert 1 <= len(ids) <= tiny_config.self_distill.max_new_tokens
        text = tokenizer.decode(ids)
        assert "\n" not in text[:-1] and tokenizer.pad_token not in text
    torch.manual_seed(0)
    out = objective.loss(model, PROBLEMS)  # samples the same rollouts, then scores exactly their tokens
    assert out.tokens == sum(len(r) for r in rollouts)


def test_mixed_is_the_weighted_sum(lora_model: tuple[Any, Any], tiny_config: DistillConfig) -> None:
    model, tokenizer = lora_model
    model.eval()
    weights = tiny_config.mixed.model_copy(update={"sft_weight": 0.25, "self_distill_weight": 2.0})
    mixed = MixedObjective(tokenizer, 128, tiny_config.self_distill, weights)
    sft = SftObjective(tokenizer, 128)
    distill = SelfDistillObjective(tokenizer, 128, tiny_config.self_distill)
    torch.manual_seed(3)
    together = mixed.loss(model, [*TRACES, *PROBLEMS])
    torch.manual_seed(3)
    expected = 0.25 * sft.loss(model, TRACES).loss + 2.0 * distill.loss(model, PROBLEMS).loss
    torch.testing.assert_close(together.loss, expected)


def test_mixed_with_an_ema_teacher_trains(lora_model: tuple[Any, Any], tiny_config: DistillConfig) -> None:
    """The EMA teacher swaps the adapter's weights in place for its forward pass: the mixed step must still
    backpropagate through its SFT part (it once failed with "modified by an inplace operation")."""
    model, tokenizer = lora_model
    mixed = MixedObjective(tokenizer, 128, _config(tiny_config, teacher="ema").self_distill, tiny_config.mixed)
    model.train()
    losses = _train(model, lambda: mixed.loss(model, [*TRACES, *PROBLEMS]).loss, steps=2)
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # finite, not NaN


def test_an_over_long_prompt_loses_its_head_with_a_warning(lora_model: tuple[Any, Any]) -> None:
    model, tokenizer = lora_model
    sft = SftObjective(tokenizer, max_len=24)
    long = [Example(task_id="a", prompt="x" * 100 + STUDENT, teacher_prompt=TEACHER, completion=" 5\n")]
    with pytest.warns(UserWarning, match="lost its head"):
        out = sft.loss(model, long)
    assert out.processed_tokens == 24 and out.tokens == 3


def test_rollouts_are_cut_after_their_own_stop_string(lora_model: tuple[Any, Any], tiny_config: DistillConfig) -> None:
    _, tokenizer = lora_model
    objective = SelfDistillObjective(tokenizer, 128, tiny_config.self_distill)
    ids = tokenizer("x = 1\ny = 2\n\n\nz = 3\n", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(objective._cut(ids, ("\n",))) == "x = 1\n"  # a one-line answer
    assert tokenizer.decode(objective._cut(ids, ("\n\n\n",))) == "x = 1\ny = 2\n\n\n"  # a program
    assert objective._cut(ids, ("never",)) == ids
    eos = tokenizer.eos_token_id
    assert objective._cut([*ids[:2], eos, *ids[2:]], ("\n",)) == [*ids[:2], eos]


class TestBuiltinObjectives(ObjectiveConformance):
    """Each built-in objective, and a ForwardingObjective around one, on a fresh LoRA model of the tiny base."""

    @pytest.fixture(params=["sft", "self-distill", "mixed", "forwarding"])
    def name(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def model(self, lora_model: tuple[Any, Any]) -> Any:
        return lora_model[0]

    @pytest.fixture
    def objective(self, name: str, lora_model: tuple[Any, Any], tiny_config: DistillConfig) -> Objective:
        if name == "forwarding":
            return ForwardingObjective(make_objective("self-distill", lora_model[1], tiny_config))
        return make_objective(name, lora_model[1], tiny_config)

    @pytest.fixture
    def batch(self, name: str) -> list[Example]:
        return PROBLEMS if name in ("self-distill", "forwarding") else TRACES


def test_a_forwarding_objective_is_named_as_the_one_it_wraps(lora_model: tuple[Any, Any],
                                                              tiny_config: DistillConfig) -> None:
    forwarding = ForwardingObjective(make_objective("self-distill", lora_model[1], tiny_config))
    assert forwarding.name == "self-distill"


def test_the_suite_catches_a_loss_that_does_not_reach_the_weights(lora_model: tuple[Any, Any],
                                                                  tiny_config: DistillConfig) -> None:
    """The suite must be able to fail: an objective whose loss is cut from the graph is rejected."""
    model, tokenizer = lora_model

    class Detached(ForwardingObjective):
        def loss(self, model: Any, batch: Sequence[Example]) -> ObjectiveLoss:
            out = super().loss(model, batch)
            return replace(out, loss=out.loss.detach().requires_grad_())

    suite = TestBuiltinObjectives()
    with pytest.raises(AssertionError, match="does not reach the trainable weights"):
        suite.test_one_step_trains_the_lora_weights_and_only_them(
            Detached(make_objective("sft", tokenizer, tiny_config)), model, TRACES)


# ------------------------------------------------------------------ the fast self-distill step equals the plain one

ADVICE = "Advice from past problems:\nPattern: a retry must change the answer.\n\n"
SHARED = [  # teacher prompts that share a long head (the advice), then differ, of different lengths
    Example(task_id=f"s{i}", prompt=f"Question: What is {i} + {i}?\nAnswer:",
            teacher_prompt=f"{ADVICE}{'Question: What is 1 + 1?' * (i % 3)}\nAnswer: 2\n\nQuestion: What is {i} + {i}?"
                           "\nAnswer:")
    for i in range(5)
]


def _plain_loss(objective: SelfDistillObjective, model: Any, batch: Sequence[Example],
                rollouts: Sequence[list[int]]) -> torch.Tensor:
    """The step as it was first written: one padded batch each, the full forward's logits, `_divergence`."""
    from procmem.distill.objectives import _divergence

    enc = objective._enc
    student = enc.pack([enc.ids(e.prompt, special=True) for e in batch], rollouts)
    teacher = enc.pack([enc.ids(e.teacher_prompt, special=True) for e in batch], rollouts)
    with torch.no_grad(), objective._teacher(model):
        t_logits = model(input_ids=teacher.input_ids, attention_mask=teacher.attention_mask).logits
    s_logits = model(input_ids=student.input_ids, attention_mask=student.attention_mask).logits
    return _divergence(s_logits[student.predict_mask], t_logits[teacher.predict_mask], objective.settings)


@pytest.mark.parametrize(("divergence", "teacher"), [("reverse_kl", "base"), ("reverse_kl", "ema"), ("jsd", "base")])
def test_self_distill_loss_and_gradient_equal_the_plain_full_logits_step(
    lora_model: tuple[Any, Any], tiny_config: DistillConfig, divergence: str, teacher: str
) -> None:
    """Length-grouped forwards, the teacher's shared prompt head run once, logits only at answer positions and the
    chunked reverse KL change the cost of a step, not its loss or gradient."""
    from procmem.distill.objectives import _plan_groups

    model, tokenizer = lora_model
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    objective = SelfDistillObjective(tokenizer, 256, _config(tiny_config, divergence=divergence,
                                                             teacher=teacher).self_distill)
    objective.after_step(model)  # the EMA teacher starts from the current adapter ...
    for p in model.parameters():
        if p.requires_grad:
            p.data.add_(torch.randn_like(p) * 0.05)  # ... which then moves, so teacher and student differ
    rollouts = [tokenizer(text, add_special_tokens=False)["input_ids"]
                for text in (" 0\n", " 2 because\n", " 4\n", " six or so\n", " 8\n")]
    # The teacher's rows share the advice: the plan runs it once.
    enc = objective._enc
    packed = enc.pack([enc.ids(e.teacher_prompt, special=True) for e in SHARED], rollouts)
    rows = [packed.input_ids[r, : int(packed.attention_mask[r].sum())].tolist() for r in range(len(SHARED))]
    first = packed.predict_mask.int().argmax(1).tolist()
    assert any(g.prefix >= len(ADVICE) for g in _plan_groups(rows, first, share_prefixes=True))
    model.eval()  # no dropout, so both computations see the same function
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grad(compute: Any) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in trainable if p.grad is not None])

    fast, fast_grad = loss_and_grad(lambda: objective.rollout_loss(model, SHARED, rollouts).loss)
    plain, plain_grad = loss_and_grad(lambda: _plain_loss(objective, model, SHARED, rollouts))
    assert float(plain) > 1e-3
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_reverse_kl_equals_the_divergence_of_the_logits(softcap: float | None) -> None:
    from procmem.distill.objectives import _KL_ROWS, _ChunkedReverseKl, _divergence

    torch.manual_seed(0)
    n, hidden, vocab = 2 * _KL_ROWS + 37, 16, 300  # three chunks, the last one short
    weight = torch.randn(vocab, hidden)
    student = torch.randn(n, hidden, requires_grad=True)
    teacher = torch.randn(n, hidden)

    def logits(h: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.linear(h, weight)
        return out if softcap is None else torch.tanh(out / softcap) * softcap

    expected = _divergence(logits(student), logits(teacher), DistillConfig().self_distill)
    (expected_grad,) = torch.autograd.grad(expected, student)
    got = _ChunkedReverseKl.apply(student, teacher, weight, softcap)
    (got_grad,) = torch.autograd.grad(got, student)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-7)


def test_a_shared_prefix_gives_the_full_forwards_hidden_states_past_the_sliding_window() -> None:
    """Rows that run on a shared prefix's KV cache see what one full forward sees, also where the prompt is longer
    than the sliding window of the model's local-attention layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from procmem.distill.objectives import _completion_hidden, _Encoder

    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2)).eval()

    class _Ids:  # a tokenizer stand-in: the packer only needs pad_token_id
        pad_token_id = 0

    enc = _Encoder(_Ids(), 64)
    head = list(range(3, 23))  # 20 shared tokens: more than twice the window
    prompts = [head + [30 + i] * (i + 1) for i in range(4)]
    packed = enc.pack(prompts, [[40 + i, 41, 42][: i % 3 + 1] for i in range(4)])
    with torch.no_grad():
        shared = _completion_hidden(model, packed, share_prefixes=True)
        full = model.model(input_ids=packed.input_ids, attention_mask=packed.attention_mask).last_hidden_state
    torch.testing.assert_close(shared, full[packed.predict_mask], rtol=1e-4, atol=1e-5)


def test_the_plan_covers_every_row_once_and_shares_only_prompt_tokens() -> None:
    from procmem.distill.objectives import _plan_groups

    head = list(range(100, 160))
    rows = [head + [1] * 5 + [7] * 3, head + [2] * 40 + [7] * 3, head + [3] * 6 + [7] * 2, list(range(200, 210)),
            head[:4] + [9] * 80]
    first = [len(r) - 4 for r in rows]
    for share in (False, True):
        groups = _plan_groups(rows, first, share_prefixes=share)
        assert sorted(r for g in groups for r in g.rows) == list(range(len(rows)))
        for g in groups:
            assert all(g.prefix <= first[r] and rows[r][: g.prefix] == rows[g.rows[0]][: g.prefix] for r in g.rows)
            assert share or g.prefix == 0
    shared = _plan_groups(rows, first, share_prefixes=True)
    assert any(set(g.rows) >= {0, 2} and g.prefix >= len(head) for g in shared)  # the common head runs once
    assert not any({3, 4} <= set(g.rows) for g in _plan_groups(rows, first, share_prefixes=False))  # 10 vs 84 tokens


# ------------------------------------------------------------------------------------------------ the sampler


def test_sampling_at_a_tiny_temperature_is_greedy_decoding_cut_at_each_rows_stop_and_limit(
    lora_model: tuple[Any, Any], tiny_config: DistillConfig
) -> None:
    """Prompts of different lengths (left padding), rows that finish early and leave the batch, per-row limits and
    stops: the hand-rolled sampler follows transformers' own greedy ``generate`` token for token."""
    model, tokenizer = lora_model
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    objective = SelfDistillObjective(tokenizer, 256, _config(tiny_config, rollout_temperature=1e-4).self_distill)
    prompts = [tokenizer(text)["input_ids"] for text in ("Q: 1?\nA:", "Question: What is 12 + 30?\nAnswer:", "x",
                                                         "Spell it:")]
    stops = [("\n",), ("e",), ("never",), ("t", "a")]
    limits = [12, 20, 7, 16]
    got = objective.sample(model, prompts, stops=stops, limits=limits)
    model.eval()
    for prompt, stop, limit, ids in zip(prompts, stops, limits, got, strict=True):
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=limit,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        assert ids == objective._cut(out[0, len(prompt):].tolist()[:limit], stop)
    assert len({len(ids) for ids in got}) > 1  # rows did finish at different steps


def test_sampled_first_tokens_follow_the_models_distribution(lora_model: tuple[Any, Any],
                                                             tiny_config: DistillConfig) -> None:
    """The inverse-CDF draw samples softmax(logits / T): first-token frequencies over 4,000 rollouts match the
    probabilities (within 5 standard errors) for temperature 1 and 2."""
    model, tokenizer = lora_model
    prompt = tokenizer("Question: What is 2 + 3?\nAnswer:")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    n = 4000
    for temperature in (1.0, 2.0):
        objective = SelfDistillObjective(tokenizer, 256, _config(tiny_config, rollout_temperature=temperature)
                                         .self_distill)
        torch.manual_seed(1)
        first = torch.tensor([ids[0] for ids in objective.sample(model, [prompt] * n, limits=[1] * n)])
        probs = torch.softmax(logits / temperature, dim=-1)
        freq = torch.bincount(first, minlength=probs.numel()).double() / n
        se = (probs * (1 - probs) / n).sqrt().double() + 1e-3
        assert ((freq - probs.double()).abs() <= 5 * se).all(), (freq - probs).abs().max()
