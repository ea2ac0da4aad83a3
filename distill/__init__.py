"""Offline distillation: memory-guided, verified corrections trained into a LoRA adapter.

collect episodes -> build corrected traces (teacher with memory + feedback, verifier-filtered) ->
train (sft / self-distill / mixed) -> gate (memory-free, held-out) -> register ``vN`` -> promote.
distill trains and never serves.
"""

from procmem.core.registry import (
    AdapterManifest,
    PromotionState,
    list_adapters,
    promote,
    promotion_state,
    read_manifest,
    register_adapter,
    resolve_adapter,
    rollback,
)
from procmem.distill.config import (
    DistillConfig,
    GateConfig,
    LoraSettings,
    MixedSettings,
    SelfDistillSettings,
    TraceConfig,
    TrainSettings,
)
from procmem.distill.gate import GateReport, PairedTest, SuiteResult, compare, evaluate, gate_table, mcnemar
from procmem.distill.objectives import (
    ForwardingObjective,
    MixedObjective,
    Objective,
    ObjectiveLoss,
    SelfDistillObjective,
    SftObjective,
    completion_logits,
    make_objective,
)
from procmem.distill.run import DistillBusy, DistillDeps, DistillResult, default_deps, distill_lock, run_distillation
from procmem.distill.scheduler import parse_interval, run_every
from procmem.distill.storage import RunStage, RunState, latest_run_dir
from procmem.distill.traces import (
    Example,
    TeacherContext,
    Trace,
    TraceBuild,
    TrainingItem,
    build_traces,
    export_traces,
    load_trace_build,
    save_trace_build,
    success_traces,
    training_items,
)
from procmem.distill.train import TrainResult, load_trainable_model, train_adapter

__all__ = [
    "AdapterManifest",
    "DistillBusy",
    "DistillConfig",
    "DistillDeps",
    "DistillResult",
    "Example",
    "ForwardingObjective",
    "GateConfig",
    "GateReport",
    "LoraSettings",
    "MixedObjective",
    "MixedSettings",
    "Objective",
    "ObjectiveLoss",
    "PairedTest",
    "PromotionState",
    "RunStage",
    "RunState",
    "SelfDistillObjective",
    "SelfDistillSettings",
    "SftObjective",
    "SuiteResult",
    "TeacherContext",
    "Trace",
    "TraceBuild",
    "TraceConfig",
    "TrainResult",
    "TrainSettings",
    "TrainingItem",
    "build_traces",
    "compare",
    "completion_logits",
    "default_deps",
    "distill_lock",
    "evaluate",
    "export_traces",
    "gate_table",
    "latest_run_dir",
    "list_adapters",
    "load_trace_build",
    "load_trainable_model",
    "make_objective",
    "mcnemar",
    "parse_interval",
    "promote",
    "promotion_state",
    "read_manifest",
    "register_adapter",
    "resolve_adapter",
    "rollback",
    "run_distillation",
    "run_every",
    "save_trace_build",
    "success_traces",
    "train_adapter",
    "training_items",
]
