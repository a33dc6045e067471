"""``crdist bench eval``: what each protocol costs per (checkpoint, task), with the features of a
checkpoint on a task computed once and shared by ``knn`` and ``linear``; and the linear probe's two
solvers on a problem of the size the issue of scale is about.

1. The evaluation job itself (``run_eval_job``, what each Ray eval task runs), in this process,
   for one checkpoint on every task of the study: the initial model c_0 by default, or the
   checkpoints of a finished run (``--run``). Per (checkpoint, task): the shared features' seconds,
   each protocol's own seconds, and the whole job's. Without sharing, each feature protocol would
   pay the features again.
2. The linear probe's cross-validated grid search (3 folds × 5 values of C, then the final fit)
   on synthetic features of ``--probe-samples`` × ``--probe-dims`` with ``--probe-classes``
   classes: scikit-learn refitting per C and fold, against crdist's warm-started torch path.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_eval(config: Path, overrides: list[str], run: Path | None, probe: tuple[int, int, int],
               json_out: Path | None) -> int:
    from crdist.data.prepare import prepare
    from crdist.evaluate.job import EvalJob, run_eval_job
    from crdist.study import load_study

    study = load_study(run / "config.yaml" if run else config, overrides)
    manifest = prepare(study.data, log=lambda line: print(f"data   {line}"))
    with tempfile.TemporaryDirectory(prefix="crdist-bench-eval-") as tmp:
        checkpoints = _checkpoints(study, manifest, run, Path(tmp))
        print(f"bench eval: protocols {', '.join(study.evaluate.protocols)}; {len(checkpoints)} checkpoint(s) × "
              f"{len(manifest.tasks)} tasks, in this process")
        rows = []
        for name, row, weights in checkpoints:
            for task in range(1, len(manifest.tasks) + 1):
                job = EvalJob.from_study(study, checkpoint=name, row=row, task=task, weights=str(weights),
                                         shards=str(manifest.root), output=str(Path(tmp) / f"{row}-{task}.json"))
                result = run_eval_job(job, threads=max(1, int(study.evaluate.cpus)))
                rows.append({"checkpoint": name, "task": task, "seconds": result["seconds"],
                             "feature_seconds": result["feature_seconds"],
                             "protocol_seconds": result["protocol_seconds"]})
                print(f"  {name} × task {task}: {result['seconds']:.2f} s (features {result['feature_seconds']:.2f} s, "
                      + ", ".join(f"{p} {s:.2f} s" for p, s in result["protocol_seconds"].items()) + ")", flush=True)
    solvers = _probe_solvers(*probe)
    _print(rows, study.evaluate.protocols, solvers, probe)
    if json_out:
        json_out.write_text(json.dumps({"evaluations": rows, "linear_solvers": solvers,
                                        "probe_problem": list(probe)}, indent=1))
        print(f"wrote {json_out}")
    return 0


def _checkpoints(study, manifest, run: Path | None, tmp: Path) -> list[tuple[str, int, Path]]:
    if run is not None:
        found = [("c_0", 0, run / "models" / "c_0.safetensors")]
        method = study.train.methods[0]
        found += [(f"{method}/c_{i}", i, run / "models" / method / f"c_{i}.safetensors")
                  for i in range(1, len(manifest.tasks) + 1)]
        return [c for c in found if c[2].is_file()]
    from crdist.models.classifier import build_classifier
    from crdist.models.weights import save_weights

    model = build_classifier(study.model, manifest.in_channels, manifest.num_classes, study.seed,
                             image_size=manifest.image_size)
    save_weights(model.state_dict(), tmp / "c_0.safetensors")
    return [("c_0", 0, tmp / "c_0.safetensors")]


def _probe_solvers(samples: int, dims: int, classes: int) -> dict:
    import torch

    from crdist.evaluate import logistic
    from crdist.evaluate.protocols.linear import LinearConfig, _sklearn_probe, choose_c

    import os

    # Both solvers on every core: scikit-learn's BLAS takes them whatever torch's setting, and the
    # evaluation jobs above left torch at evaluate.cpus threads.
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"linear probe: {samples:,} samples × {dims:,} dimensions × {classes} classes, 3-fold CV over 5 C, "
          f"then the final fit; {torch.get_num_threads()} threads", flush=True)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dims)).astype(np.float32) * 0.15
    labels = rng.integers(0, classes, samples)
    features = centres[labels] + rng.normal(size=(samples, dims)).astype(np.float32)
    grid = LinearConfig().c_grid
    out = {}
    for solver in ("sklearn", "torch"):
        started = time.perf_counter()
        c = choose_c(features, labels, grid, 3, seed=0, solver=solver)
        if solver == "torch":
            path = [value for value in sorted(grid) if value <= c]
            logistic.fit_path(torch.as_tensor(features), torch.as_tensor(labels), path, torch.device("cpu"))
        else:
            _sklearn_probe(c).fit(features, labels)
        out[solver] = {"seconds": time.perf_counter() - started, "c": c}
        print(f"  {solver:<8} {out[solver]['seconds']:6.1f} s  (C {c})", flush=True)
    return out


def _print(rows: list[dict], protocols: list[str], solvers: dict, probe: tuple[int, int, int]) -> None:
    n = len(rows)
    features = sum(r["feature_seconds"] for r in rows) / n
    total = sum(r["seconds"] for r in rows) / n
    print()
    print("per (checkpoint, task), mean over", n)
    print(f"  {'whole evaluation job':<34} {total:7.2f} s")
    print(f"  {'shared features (computed once)':<34} {features:7.2f} s")
    for p in protocols:
        print(f"  {'protocol ' + p:<34} {sum(r['protocol_seconds'][p] for r in rows) / n:7.2f} s")
    sharing = [p for p in protocols if p in ("knn", "linear")]
    if len(sharing) > 1:
        print(f"  features recomputed per protocol would add {features * (len(sharing) - 1):.2f} s")
    s, t = solvers["sklearn"]["seconds"], solvers["torch"]["seconds"]
    print(f"linear probe at {probe[0]:,} × {probe[1]:,} × {probe[2]}: scikit-learn {s:.1f} s, "
          f"torch warm path {t:.1f} s ({s / t:.2f}×)")
