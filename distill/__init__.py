"""Offline distillation: memory-guided, verified corrections trained into a LoRA adapter.

collect episodes -> build corrected traces (teacher with memory + feedback, verifier-filtered) ->
train (sft / self-distill / mixed) -> gate (memory-free, held-out) -> register ``vN`` -> promote.
distill trains and never serves.

The job's view::

    config = DistillConfig(model="local:default", gate=GateConfig(test_suites=("builtin:arith",)))
    result = run_distillation(config, home)              # one run, resumed if one was interrupted
    print(result.status, result.version, result.reason)  # promoted | rejected | skipped
    run_every(config, home, 6 * 3600)                    # or periodically (``procmem distill --every 6h``)

This package exports what a user calls (``__all__``): the job (:func:`run_distillation`,
:class:`DistillResult`, :class:`DistillDeps` with :func:`default_deps`, :func:`run_every`), the configs as you set
them (:class:`DistillConfig` and its sections :class:`TraceConfig`, :class:`LoraSettings`,
:class:`TrainSettings`, :class:`SelfDistillSettings`, :class:`MixedSettings`, :class:`GateConfig`) and the
objectives (the :class:`Objective` seam, :class:`ObjectiveLoss`, :class:`Example`, :class:`ForwardingObjective`,
the built-ins :class:`SftObjective`, :class:`SelfDistillObjective`, :class:`MixedObjective`, and
:func:`make_objective`). The adapter registry (promote, rollback, manifests, the gate's records) is
:mod:`procmem.core.registry`.

Public modules are the configs and the steps of a run, each usable on its own: :mod:`.config`,
:mod:`.objectives` (the seam and the built-ins), :mod:`.traces` (``training_items``, ``build_traces``,
``success_traces``: the one trace builder), :mod:`.train` (``train_adapter``, ``load_trainable_model``) and
:mod:`.gate` (``evaluate``, ``compare``, ``mcnemar``). The ``_``-prefixed modules are the machinery, internal
to procmem: :mod:`._run` (the stage machine, the job lock, ``DistillBusy``), :mod:`._scheduler` (``--every``),
:mod:`._storage` (``RunState``, run directories, the watermark), :mod:`._manifest` (building and registering a
manifest) and :mod:`._distributed` (processes under ``accelerate launch``).
"""

from procmem.distill._run import DistillDeps, DistillResult, default_deps, run_distillation
from procmem.distill._scheduler import run_every
from procmem.distill.config import (
    DistillConfig,
    GateConfig,
    LoraSettings,
    MixedSettings,
    SelfDistillSettings,
    TraceConfig,
    TrainSettings,
)
from procmem.distill.objectives import (
    ForwardingObjective,
    MixedObjective,
    Objective,
    ObjectiveLoss,
    SelfDistillObjective,
    SftObjective,
    make_objective,
)
from procmem.distill.traces import Example

__all__ = [
    "DistillConfig",
    "DistillDeps",
    "DistillResult",
    "Example",
    "ForwardingObjective",
    "GateConfig",
    "LoraSettings",
    "MixedObjective",
    "MixedSettings",
    "Objective",
    "ObjectiveLoss",
    "SelfDistillObjective",
    "SelfDistillSettings",
    "SftObjective",
    "TraceConfig",
    "TrainSettings",
    "default_deps",
    "make_objective",
    "run_distillation",
    "run_every",
]
