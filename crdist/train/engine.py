"""The Accelerate + DeepSpeed ZeRO engine one worker trains with.

Facts this module encodes (accelerate 1.15, deepspeed 0.19, no CUDA):
- ``Accelerator(cpu=True, ...)`` silently drops DeepSpeed, so it is never passed; without a gloo
  ``InitProcessGroupKwargs`` Accelerate counts one process and DeepSpeed's batch check fails.
- ``train_micro_batch_size_per_gpu`` must be explicit: data never goes through ``prepare``.
- Accelerate's DeepSpeed plugin checks the installed transformers version on start, so
  transformers must be installed even for vision-only studies.
- ZeRO-3 only consolidates weights on save with ``stage3_gather_16bit_weights_on_model_save``;
  in fp32 training the gathered weights are fp32 despite the key's name.
- DeepSpeed JIT-builds its CPU comm op into ``TORCH_EXTENSIONS_DIR``, which crdist defaults to one
  folder per Python environment (why: ``crdist/train/extensions.py``).
"""

from __future__ import annotations

import gc
import time
import weakref

import torch
from torch import nn

from crdist.train.config import TrainConfig
from crdist.train.extensions import COMM_OP, comm_op_built, extensions_root

extensions_root()  # sets TORCH_EXTENSIONS_DIR before DeepSpeed's first build can read it


# ZeRO-3 on CPU. DeepSpeed's defaults are sized for GPUs: a 5e8-element reduce bucket (larger than
# most models), every gathered parameter kept from forward to backward (live parameters and reuse
# distance 1e9), and one optimizer sub-group for the whole partition (whose fp64 grad-norm copy and
# AdamW temporaries are partition-sized). With them, ViT-B/16 on 2 CPU ranks peaked at 1.50× ZeRO-0's
# memory above the idle process; with these (and the two fixes below) at 0.57×, with bit-identical
# losses and weights. Figures: docs/distributed.md, "Large backbones".
ZERO3_CPU = {
    "reduce_bucket_size": 5_000_000,
    "stage3_prefetch_bucket_size": 5_000_000,
    "stage3_max_live_parameters": 10_000_000,
    "stage3_max_reuse_distance": 0,
    "sub_group_size": 10_000_000,
}


def deepspeed_config(cfg: TrainConfig, world: int) -> dict:
    accumulation = cfg.accumulation(world)
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "train_batch_size": cfg.batch_size * world * accumulation,
        # The worker marks the boundaries itself (set_gradient_accumulation_boundary); DeepSpeed
        # divides each micro-batch's loss by this count, so a step's gradient is the global mean.
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "stage3_gather_16bit_weights_on_model_save": True,
                              **(ZERO3_CPU if cfg.zero_stage == 3 and not cfg.use_gpu else {})},
        # torch.optim.AdamW: DeepSpeed's own Adam kernels JIT-compile for minutes on first use.
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def make_accelerator(cfg: TrainConfig, world: int):
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    if cfg.zero_stage == 3:
        _share_fp32_partitions_in_zero3()

    # On GPUs the process group is NCCL (made by Ray Train or from the environment).
    handlers = [] if cfg.use_gpu else [InitProcessGroupKwargs(backend="gloo")]
    return Accelerator(
        deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg, world)),
        mixed_precision="bf16" if cfg.precision == "bf16" else "no",
        kwargs_handlers=handlers,
    )


def release_engine(accelerator) -> bool:
    """Free the DeepSpeed engine (model, optimizer, gradients) of the task just trained, so that the
    next task in the same process starts from the memory a fresh process would. Returns whether
    the engine is gone.

    ``Accelerator.free_memory`` destroys the engine, but drops its own reference only after its
    garbage collection, and the engine's hooks make it a reference cycle: a second collection frees
    it. Under ZeRO-3, DeepSpeed 0.19 also keeps every engine's model for the life of the process:
    in ``parameter_offload.FWD_MODULE_STACK`` (the model is pushed at set-up and never popped) and
    in the ``functools.lru_cache`` of ``PartitionedParameterCoordinator.__params_to_release``,
    keyed by coordinator and module. Both are emptied here; a process holds one engine at a time.
    """
    engines = [weakref.ref(model) for model in accelerator._models]  # the prepared engines
    accelerator.free_memory()
    try:
        from deepspeed.runtime.zero import parameter_offload
        from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator
    except ImportError:
        pass
    else:
        parameter_offload.FWD_MODULE_STACK.clear()
        cached = PartitionedParameterCoordinator.__dict__.get("_PartitionedParameterCoordinator__params_to_release")
        for cell in getattr(cached, "__closure__", None) or ():  # under DeepSpeed's instrument_w_nvtx wrapper
            if hasattr(cell.cell_contents, "cache_clear"):
                cell.cell_contents.cache_clear()
    gc.collect()
    return all(engine() is None for engine in engines)


def _share_fp32_partitions_in_zero3() -> None:
    """DeepSpeed 0.19's ZeRO-3 keeps no separate fp32 master copy of a partition that is already
    fp32 on the optimizer's device, but it compares ``partition.device == self.device`` where
    ``self.device`` is a string ('cpu', 'cuda:0'), and ``torch.device('cpu') == 'cpu'`` is False. So
    fp32 training kept two identical copies of every partition (165 MiB per rank for ViT-B/16 on 2
    ranks). The comparison is made with a ``torch.device`` for the duration of that call; the
    partition is then shared, as DeepSpeed intends."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    create = getattr(Stage3, "_create_fp32_partitions", None)
    if create is None or getattr(create, "crdist_device_fix", False):
        return

    def create_fp32_partitions(self):
        device = self.device
        self.device = torch.device(device)
        try:
            return create(self)
        finally:
            self.device = device

    create_fp32_partitions.crdist_device_fix = True
    Stage3._create_fp32_partitions = create_fp32_partitions


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups so a phase can freeze the backbone by giving it learning rate 0.

    Under ZeRO a parameter without a gradient is stepped with a zero gradient; with lr 0 AdamW
    leaves it bit-for-bit unchanged (weight decay is scaled by lr too).
    """
    return [
        {"params": list(model.backbone.parameters()), "weight_decay": weight_decay, "group": "backbone"},
        {"params": list(model.head.parameters()), "weight_decay": weight_decay, "group": "head"},
    ]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW (crdist's default) or SGD with momentum (the paper's code: momentum
    0.9, weight decay 5e-4). Both keep the LP-FT probe's frozen backbone bit-identical at lr 0."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def set_learning_rates(optimizer, backbone_lr: float, head_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = head_lr if group.get("group") == "head" else backbone_lr


def reset_optimizer_state(optimizer) -> None:
    """Forget the optimizer's state (Adam's moments and step counts, SGD's momentum), as a freshly
    built optimizer would.

    The innermost torch optimizer (inside Accelerate's and ZeRO's wrappers, over the local fp32
    partitions) recreates its state lazily on the next step, so this works for ZeRO 0–3.
    """
    inner = optimizer
    while hasattr(inner, "optimizer"):
        inner = inner.optimizer
    inner.state.clear()


def cpu_comm_op_cached() -> bool:
    """Whether DeepSpeed's CPU shared-memory comm op is already compiled on this machine (or not
    needed: DeepSpeed's accelerator here is not the CPU's)."""
    if comm_op_built():
        return True
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().create_op_builder(COMM_OP) is None


def build_cpu_comm_op() -> float:
    """Compile (first time, ~1 min on 2 cores) or load DeepSpeed's CPU comm op; returns seconds.

    DeepSpeed builds it on the first ``deepspeed.initialize`` with no switch to turn it off; doing
    it once up front keeps every worker of the first job from waiting on the same build.
    """
    from deepspeed.accelerator import get_accelerator

    started = time.monotonic()
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        builder = accelerator.create_op_builder(COMM_OP)
        if builder is not None:
            builder.load(verbose=False)
    return time.monotonic() - started
