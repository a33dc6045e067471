"""Resume a checkpoint on another number of workers: the capacity a preempted job gets back is
often smaller than what it had.

DeepSpeed refuses to load a ZeRO-1/2/3 checkpoint on another data-parallel world size, and its
universal checkpoint (``ds_to_universal``) handles Adam alone (it hard-codes ``exp_avg`` and
``exp_avg_sq``; SGD's momentum fails) and, under ZeRO-3, loads every parameter group with group
0's settings (crdist's head would take the backbone's learning rate) and one shared ``step``
tensor that AdamW then advances once per group. So crdist re-shards the checkpoint itself:

1. ``read_full_state``: from the files DeepSpeed wrote (any worker count, ZeRO 0–3), every
   parameter's full fp32 value and full optimizer state (whatever keys the optimizer keeps), each
   parameter group's scalars (Adam's ``step``), and the module's buffers (BatchNorm statistics).
2. ``write_full_state``: into an engine prepared for the new worker count, every rank writes its
   own partition of each of them. The optimizer's parameter groups (learning rates, crdist's
   ``group`` names) stay the new engine's own.

Loaded state equals the saved state bit for bit; training on continues as the uninterrupted run
does up to the order of floating-point sums (docs/failures.md). The
files are DeepSpeed's pickles: read only checkpoints from a run directory you trust.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from crdist.errors import CrdistError


class ReshardError(CrdistError, RuntimeError):
    pass


@dataclass
class FullState:
    stage: int
    world: int
    params: dict[str, torch.Tensor]  # name → full fp32 value
    state: dict[str, dict[str, torch.Tensor]]  # name → {optimizer state key → full tensor}
    scalars: list[dict]  # per parameter group: the optimizer's scalar state (Adam's step)
    buffers: dict[str, torch.Tensor]  # the module's buffers, as rank 0 saved them


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)  # DeepSpeed's own pickles


def _by_rank(files) -> list[Path]:
    return sorted(files, key=lambda f: int(re.search(r"zero_pp_rank_(\d+)_", f.name).group(1)))


def _is_tensor_state(value) -> bool:
    return torch.is_tensor(value) and value.dim() > 0


def read_full_state(engine_dir: str | Path) -> FullState:
    """Everything a DeepSpeed checkpoint directory (the tag folder) holds, gathered whole."""
    engine_dir = Path(engine_dir)
    optim_files = _by_rank(engine_dir.glob("*zero_pp_rank_*_mp_rank_00_optim_states.pt"))
    if not optim_files:
        return _read_unpartitioned(engine_dir)
    shards = [_load(f)["optimizer_state_dict"] for f in optim_files]
    world = len(shards)
    stage = shards[0].get("zero_stage", 1)
    stage = int(getattr(stage, "value", stage))
    params, state, scalars = {}, {}, []
    if stage <= 2:
        model_states = _load(engine_dir / "mp_rank_00_model_states.pt")
        buffers = _buffers(model_states["module"], model_states["param_shapes"])
        for g, shapes in enumerate(model_states["param_shapes"]):  # each rank's mapping names only its own
            base = shards[0]["base_optimizer_state"]["state"].get(g, {})
            keys = [k for k, v in base.items() if _is_tensor_state(v)]
            scalars.append({k: v for k, v in base.items() if k not in keys})
            for name, shape in shapes.items():
                pieces: dict[str, list] = {"param": [], **{k: [] for k in keys}}
                for shard in shards:  # in rank order, a parameter's fragments are consecutive
                    fragment = shard["param_slice_mappings"][g].get(name)
                    if fragment is None:
                        continue
                    pieces["param"].append(shard["single_partition_of_fp32_groups"][g].narrow(0, fragment.start, fragment.numel))
                    for k in keys:
                        pieces[k].append(shard["base_optimizer_state"]["state"][g][k].narrow(0, fragment.start, fragment.numel))
                params[name] = torch.cat(pieces["param"]).view(shape).clone()
                state[name] = {k: torch.cat(pieces[k]).view(shape).clone() for k in keys}
    else:
        model_files = _by_rank(engine_dir.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"))
        model_states = _load(model_files[0])
        buffers = _buffers(model_states["module"], model_states["param_shapes"])
        for index, shapes in enumerate(model_states["param_shapes"]):  # one entry per optimizer sub-group
            first = shards[0]["optimizer_state_dict"]["state"].get(index, {})
            keys = [k for k, v in first.items() if _is_tensor_state(v)]
            scalars.append({k: v for k, v in first.items() if k not in keys})
            offset = 0
            for name, shape in shapes.items():
                numel = int(torch.Size(shape).numel())
                part = -(-numel // world)  # each rank holds ceil(numel / world), the last one padded
                pieces = {"param": [], **{k: [] for k in keys}}
                for shard in shards:
                    pieces["param"].append(shard["fp32_flat_groups"][index].narrow(0, offset, part))
                    for k in keys:
                        pieces[k].append(shard["optimizer_state_dict"]["state"][index][k].narrow(0, offset, part))
                params[name] = torch.cat(pieces["param"])[:numel].view(shape).clone()
                state[name] = {k: torch.cat(pieces[k])[:numel].view(shape).clone() for k in keys}
                offset += part
    return FullState(stage, world, params, state, scalars, buffers)


def _buffers(module_state: dict, param_shapes: list[dict]) -> dict[str, torch.Tensor]:
    names = {n for shapes in param_shapes for n in shapes}
    return {k: v.clone() for k, v in module_state.items() if k not in names}


def _read_unpartitioned(engine_dir: Path) -> FullState:
    """ZeRO-0: one file with the module and the torch optimizer's whole state dict."""
    saved = _load(engine_dir / "mp_rank_00_model_states.pt")
    module, optimizer = saved["module"], saved["optimizer"]
    named = dict(module)
    # torch numbers parameters across its groups in order, which is the module's order here
    # (crdist's groups: the backbone's parameters, then the head's)
    order = [i for group in optimizer["param_groups"] for i in group["params"]]
    param_names = [n for n in named if n.startswith(("backbone.", "head."))]
    parameters = [n for n in param_names if not _is_buffer_name(n, module)]
    if len(order) != len(parameters):
        raise ReshardError(f"{engine_dir}: {len(order)} parameters in the optimizer, {len(parameters)} in the module")
    index_to_name = dict(zip(order, parameters))
    state, scalars = {}, []
    for i, entry in optimizer["state"].items():
        state[index_to_name[i]] = {k: v for k, v in entry.items() if _is_tensor_state(v)}
    for group in optimizer["param_groups"]:
        entry = optimizer["state"].get(group["params"][0], {}) if group["params"] else {}
        scalars.append({k: v for k, v in entry.items() if not _is_tensor_state(v)})
    params = {n: named[n] for n in parameters}
    buffers = {n: v for n, v in named.items() if n not in params}
    return FullState(0, saved.get("dp_world_size", 1), params, state, scalars, buffers)


_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _is_buffer_name(name: str, module: dict) -> bool:
    return name.endswith(_BUFFER_SUFFIXES)


def _inner_optimizer(engine):
    optimizer = engine.optimizer
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def write_full_state(engine, full: FullState) -> None:
    """Every rank writes its partition of ``full`` into ``engine`` (prepared for the new worker
    count, not yet stepped)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero, inner = engine.optimizer, _inner_optimizer(engine)
    stage = engine.zero_optimization_stage()
    if stage != full.stage:
        raise ReshardError(f"the checkpoint was written at ZeRO-{full.stage}; resume it with train.zero_stage={full.stage}")
    named = dict(engine.module.named_parameters())
    if set(named) != set(full.params):
        raise ReshardError(f"the checkpoint's parameters differ from the model's: {sorted(set(named) ^ set(full.params))[:5]}")
    with torch.no_grad():
        for name, buffer in engine.module.named_buffers():
            if name in full.buffers:
                buffer.copy_(full.buffers[name])

    def fresh_state(flat: torch.Tensor, group: int) -> dict:
        """torch creates optimizer state lazily, at the first step: create it now."""
        keys = next(iter(full.state.values()), {})
        entry = {k: torch.zeros_like(flat) for k in keys}
        entry.update({k: v.clone() if torch.is_tensor(v) else v for k, v in full.scalars[group].items()})
        return entry

    if stage == 0:
        with torch.no_grad():
            for g, group in enumerate(inner.param_groups):
                by_identity = {id(p): n for n, p in named.items()}
                for p in group["params"]:
                    name = by_identity[id(p)]
                    p.copy_(full.params[name])
                    entry = {k: v.clone() for k, v in full.state.get(name, {}).items()}
                    entry.update({k: v.clone() if torch.is_tensor(v) else v for k, v in full.scalars[g].items()})
                    if entry:
                        inner.state[p] = entry
        return

    if stage in (1, 2):
        from deepspeed.utils.mixed_precision_linkage import lazy_init_hp_params_optimizer_state

        for g, flat in enumerate(zero.single_partition_of_fp32_groups):
            inner.state[flat] = fresh_state(flat, g)
            lazy_init_hp_params_optimizer_state(zero.bit16_groups[g], flat, inner.state)
        for name, p in named.items():
            safe_set_full_fp32_param(p, full.params[name])
            for key, value in full.state[name].items():
                safe_set_full_optimizer_state(p, value, key)
        zero.update_lp_params()  # the fp32 partitions → the model's weights (an all-gather)
        return

    for g, flat in enumerate(zero.fp32_partitioned_groups_flat):
        inner.state[flat] = fresh_state(flat, g)
    for name, p in named.items():
        # Not safe_set_full_*: under ZeRO-3 they take [rank·part, (rank+1)·part) of the unpadded
        # value and fail for a parameter whose size the world size does not divide.
        for key, value in [(None, full.params[name]), *full.state[name].items()]:
            partition, _ = zero._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
            part, rank = partition.numel(), zero._get_param_partition_rank(p)
            padded = torch.nn.functional.pad(value.flatten(), (0, part * zero._get_param_partition_world_size(p) - value.numel()))
            partition.data.copy_(padded.narrow(0, rank * part, part))
    for g, flat in enumerate(zero.fp32_partitioned_groups_flat):  # fp32 partitions → the model's partitions
        zero.fp16_partitioned_groups_flat[g].data.copy_(flat.data)
        updated = zero.unflatten(zero.fp16_partitioned_groups_flat[g], zero.fp16_partitioned_groups[g])
        for partitioned, value in zip(zero.fp16_partitioned_groups[g], updated):
            partitioned.data = value.data
