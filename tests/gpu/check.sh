#!/usr/bin/env bash
# The GPU checks, end to end in a few minutes on one GPU (not part of the CPU test suite):
#   ViT-B/16 (85.8 M parameters) at 224 px, bf16, ZeRO-3 with its 16-bit gather at task end, one
#   worker on the GPU, evaluations on the GPU (evaluate.gpus), on the embedded seq-digits stream
#   resized to 224 px. Then it checks what the run wrote: CUDA peak memory, MFU against the GPU's
#   bf16 peak, the consolidated weights (fp32, every parameter), evaluations run on cuda.
#
#   tests/gpu/check.sh [RUNS_DIR]      (in an environment where crdist is installed; exit 0 = passed)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-runs}"
command -v nvidia-smi > /dev/null || { echo "tests/gpu/check.sh: no nvidia-smi: this machine has no NVIDIA GPU" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

crdist run configs/demo.yaml --name gpu-check \
    --set runs_dir="$runs" \
    --set data.tasks=2 --set data.image_size=224 \
    --set model.backbone=vit-b16 \
    --set "train.methods=[sgd]" --set train.workers=1 --set train.use_gpu=true \
    --set train.precision=bf16 --set train.zero_stage=3 --set train.max_steps=30 --set train.batch_size=32 \
    --set train.loader_workers=4 \
    --set "evaluate.protocols=[knn,linear,finetune]" --set evaluate.gpus=1 --set evaluate.finetune.steps=20

python - "$runs/gpu-check" <<'PY'
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

run = Path(sys.argv[1])
rows = []
for task in (1, 2):
    summary = json.loads((run / "models" / "sgd" / f"c_{task}.train.json").read_text())
    assert summary["memory_measure"] == "cuda-max-allocated", summary
    assert summary["zero_stage"] == 3 and summary["world"] == 1, summary
    assert summary["mfu"] is not None and 0 < summary["mfu"] < 1, f"MFU: {summary['mfu']} (GPU not in crdist/train/usage.py?)"
    weights = load_file(str(run / "models" / "sgd" / f"c_{task}.safetensors"))
    floats = {k: v for k, v in weights.items() if v.is_floating_point()}
    assert all(v.dtype.is_floating_point and v.element_size() == 4 for v in floats.values()), "weights not fp32"
    parameters = sum(v.numel() for k, v in floats.items())
    assert parameters == summary["parameters"], (parameters, summary["parameters"])
    rows.append((task, summary["parameters"], summary["flops_per_sample"], summary["samples_per_second_per_worker"],
                 max(summary["peak_memory_bytes"]), summary["mfu"]))
devices = {json.loads(p.read_text()).get("device") for p in (run / "eval").rglob("*.json")}
assert devices and all(str(d).startswith("cuda") for d in devices), devices
print(f"{'task':>4}  {'params':>8}  {'GFLOPs/sample':>13}  {'samples/s':>9}  {'peak GiB':>8}  {'MFU':>6}")
for task, params, flops, speed, peak, mfu in rows:
    print(f"{task:>4}  {params / 1e6:>7.1f}M  {flops / 1e9:>13.1f}  {speed:>9.1f}  {peak / 2**30:>8.2f}  {mfu:>6.1%}")
print(f"evaluations ran on {', '.join(sorted(map(str, devices)))}")
print("GPU checks passed")
PY
