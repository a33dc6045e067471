"""The evaluation protocols on hand-made inputs: what each one decides, and that it decides it the
same way every time."""

import math

import pytest
import torch

from crdist.data.samples import TextDecoder, collate
from crdist.evaluate.config import EvalConfig
from crdist.evaluate.context import EvalContext, in_batches
from crdist.evaluate.protocols.finetune import finetuned_test_logits
from crdist.evaluate.protocols.knn import knn_predict
from crdist.models.classifier import build_classifier
from crdist.models.config import ModelConfig
from tests.helpers import ROOT, fixtures, study


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_knn_neighbours_with_negative_similarity_still_outvote_a_class_with_none():
    # The test point at 0°; its 3 nearest neighbours (at ±110° and 120°: cosine < 0) are all class 1.
    # Class 0's only point is at 180°, outside the 3 nearest. Summing raw cosines would give class 1
    # a negative total and class 0 zero, so class 0 would win without a single neighbour.
    bank = torch.tensor([unit(110), unit(-110), unit(120), unit(180)])
    labels = torch.tensor([1, 1, 1, 0])
    test = torch.tensor([unit(0)])
    assert knn_predict(bank, labels, test, k=3, num_classes=2).tolist() == [1]
    assert knn_predict(bank, labels, test, k=3, num_classes=2, temperature=1.0).tolist() == [1]


def test_knn_weights_closer_neighbours_more_with_a_lower_temperature():
    # Two class-0 neighbours at 60° against one class-1 neighbour at 0°: cool votes favour the
    # single closest neighbour; warm ones (nearly equal weights) the majority.
    bank = torch.tensor([unit(60), unit(-60), unit(0)])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([unit(0)])
    assert knn_predict(bank, labels, test, k=3, num_classes=2, temperature=0.1).tolist() == [1]
    assert knn_predict(bank, labels, test, k=3, num_classes=2, temperature=10.0).tolist() == [0]


def test_finetuning_a_text_checkpoint_is_the_same_whatever_the_global_rng_holds(tmp_path):
    # A BERT encoder has dropout; in a reused evaluation process the global RNG is wherever the
    # previous job left it. The result must depend on the evaluation seed alone.
    bert = fixtures.tiny_bert(tmp_path / "bert")
    model = build_classifier(ModelConfig(backbone="hf-encoder", pretrained=str(bert), max_length=16), 0, 2, seed=0)
    model.eval()
    decode = TextDecoder(str(bert), 16)
    texts = ["good film", "great love", "bad film", "awful", "the good", "the bad", "love it", "awful film"]
    samples = [decode({"__key__": f"s{i}", "txt": t.encode(), "cls": str(i % 2).encode()})
               for i, t in enumerate(texts)]
    inputs, labels = collate(samples)
    context = EvalContext(model=model, adapt_inputs=inputs, adapt_labels=labels, test=in_batches(inputs, labels),
                          num_classes=2, seed=7,
                          config=_config())
    torch.manual_seed(1)
    first = finetuned_test_logits(context)
    torch.manual_seed(2)
    torch.rand(100)
    second = finetuned_test_logits(context)
    assert torch.equal(first, second)


def _config() -> EvalConfig:
    from tests.helpers import study

    return study(evaluate={"finetune": {"steps": 5, "batch_size": 4}}).evaluate


def test_adapting_on_the_whole_train_split_streams_it_in_batches(tmp_path, digits_shards):
    # evaluate.adapt: train (the paper's kNN bank and probe): every train sample of the task, read in
    # batches; fine-tuning still adapts on the subset.
    from crdist.data.manifest import Manifest
    from crdist.evaluate.job import EvalJob, run_eval_job
    from crdist.models.classifier import build_classifier
    from crdist.models.weights import save_weights

    manifest = Manifest.load(digits_shards)
    weights = tmp_path / "c_0.safetensors"
    results = {}
    for adapt in ("subset", "train"):
        cfg = study(data={"shards": str(digits_shards)}, evaluate={"adapt": adapt, "knn": {"k": 200}})
        save_weights(build_classifier(cfg.model, 1, 10, cfg.seed).state_dict(), weights)
        job = EvalJob.from_study(cfg, checkpoint="c_0", row=0, task=2, weights=str(weights), shards=str(digits_shards),
                                 output=str(tmp_path / f"{adapt}.json"))
        results[adapt] = run_eval_job(job)
    subset, train = results["subset"], results["train"]
    assert subset["bank_samples"] == subset["adapt_samples"] == 2 * 30
    assert train["bank_samples"] == manifest.task(2).splits["train"].count == 252
    assert train["adapt_samples"] == 60 and train["accuracy"]["finetune"] == subset["accuracy"]["finetune"]
    assert train["accuracy"]["linear"] > subset["accuracy"]["linear"]  # 0.981 against 0.926: 4× the data
    # The stream gives the split in batches, exactly the samples of the split read whole.
    from crdist.data.samples import make_decoder
    from crdist.data.stream import read_split, stream_split

    decode = make_decoder(manifest, cfg.model)
    batches = list(stream_split(manifest, 2, "train", decode, batch_size=100))
    whole_inputs, whole_labels = read_split(manifest, 2, "train", decode)
    assert [len(y) for _, y in batches] == [100, 100, 52]
    assert torch.equal(torch.cat([x for x, _ in batches]), whole_inputs)
    assert torch.equal(torch.cat([y for _, y in batches]), whole_labels)


def test_one_checkpoint_on_one_task_scores_the_same_whatever_row_method_or_order(tmp_path, digits_shards):
    # Common random numbers: an evaluation's draws (fine-tuning's head and batches, the probe's
    # folds) depend on the study seed and the task only. The same weights, evaluated as c_0, as
    # sgd's c_3 and as frozen's c_5, in two orders, in one process (whose global RNG each job
    # leaves elsewhere), score identically under every protocol; another task draws differently.
    from crdist.evaluate.job import EvalJob, eval_seed, run_eval_job
    from crdist.models.weights import save_weights

    cfg = study(data={"shards": str(digits_shards)}, evaluate={"finetune": {"steps": 10, "repeats": 3}})
    weights = tmp_path / "weights.safetensors"
    save_weights(build_classifier(cfg.model, 1, 10, cfg.seed).state_dict(), weights)
    labels = [("c_0", 0), ("sgd/c_3", 3), ("frozen/c_5", 5)]

    def evaluate(label, row, task):
        job = EvalJob.from_study(cfg, checkpoint=label, row=row, task=task, weights=str(weights),
                                 shards=str(digits_shards), output=str(tmp_path / f"{row}-{task}.json"))
        result = run_eval_job(job)
        return result["accuracy"], result["details"]

    forward = [evaluate(label, row, 2) for label, row in labels]
    backward = [evaluate(label, row, 2) for label, row in reversed(labels)]
    assert all(result == forward[0] for result in forward + backward)
    draws = forward[0][1]["finetune"]["repeats"]
    assert len(draws) == 3 and len(set(draws)) > 1  # three different draws, averaged
    assert forward[0][0]["finetune"] == pytest.approx(sum(draws) / 3)
    assert eval_seed(cfg.seed, 2) != eval_seed(cfg.seed, 3) and eval_seed(cfg.seed, 2) != eval_seed(cfg.seed + 1, 2)


def test_finetune_repeats_keep_the_first_draw_of_a_single_one(digits_shards):
    # repeats: 1 is draw 0 alone; more repeats add draws and leave draw 0 as it was.
    from crdist.data.manifest import Manifest
    from crdist.data.samples import make_decoder
    from crdist.data.stream import read_split
    from crdist.evaluate.protocols.finetune import finetune

    manifest = Manifest.load(digits_shards)
    accuracies = {}
    for repeats in (1, 2):
        cfg = study(evaluate={"finetune": {"steps": 5, "repeats": repeats}})
        model = build_classifier(cfg.model, 1, 10, cfg.seed).eval()
        inputs, labels = read_split(manifest, 1, "adapt", make_decoder(manifest, cfg.model))
        labels = labels - labels.min()
        context = EvalContext(model=model, adapt_inputs=inputs, adapt_labels=labels, test=in_batches(inputs, labels),
                              num_classes=2, seed=11, config=cfg.evaluate)
        finetune(context)
        accuracies[repeats] = context.details["finetune"]
    assert accuracies[1]["std"] is None and len(accuracies[1]["repeats"]) == 1
    assert accuracies[2]["repeats"][0] == accuracies[1]["repeats"][0] and accuracies[2]["std"] is not None


_EVAL_IN_A_FRESH_PROCESS = """
import json, pickle, sys
from pathlib import Path
from crdist.evaluate.job import run_eval_job
from crdist.memory import peak_memory_bytes
import torch
import torchvision  # the ViT's library, which its builder imports on first use (~140 MB of modules)
job = pickle.loads(Path(sys.argv[1]).read_bytes())
# what the process holds before the evaluation (torch, torchvision, crdist, the allocator's arenas)
Path("/proc/self/clear_refs").write_text("5")
before = peak_memory_bytes(torch.device("cpu"))
result = run_eval_job(job)
print(json.dumps({"before": before, **result}))
"""


def test_an_evaluation_on_a_split_larger_than_its_memory_bound_stays_within_it(tmp_path):
    """9,000 test images of 3×64×64 decode to 442 MB of float32, 1.6× the 256 MiB bound; the
    evaluation streams them, so its peak stays under the bound (about 150 MB here, most of it the
    model, the decoders and the first forward pass). Holding the split whole needs its 442 MB at
    least; streaming without handing freed heap pages back grew by about half the split."""
    import json
    import pickle
    import subprocess
    import sys

    from crdist.data.prepare import prepare
    from crdist.evaluate.job import EvalJob
    from crdist.models.weights import save_weights

    fixtures.tinyimagenet(tmp_path / "raw", per_class=2, val_per_class=3000)
    bound = 256 * 2**20
    cfg = study(data={"benchmark": "seq-tinyimagenet", "root": str(tmp_path / "raw"), "shards": str(tmp_path / "shards"),
                      "classes_per_task": 3, "adapt_per_class": 2},
                model={"backbone": "vit-tiny", "patch_size": 64},  # one token: the compute is small
                evaluate={"protocols": ["knn"], "memory_gib": bound / 2**30, "batch_size": 128})
    manifest = prepare(cfg.data, log=lambda line: None)
    test = manifest.task(1).splits["test"].count
    assert test == 9000 and test * 3 * 64 * 64 * 4 > 1.6 * bound
    weights = tmp_path / "c_0.safetensors"
    save_weights(build_classifier(cfg.model, 3, 3, cfg.seed, image_size=64).state_dict(), weights)
    job = EvalJob.from_study(cfg, checkpoint="c_0", row=0, task=1, weights=str(weights), shards=str(manifest.root),
                             output=str(tmp_path / "eval.json"))
    (tmp_path / "job.pickle").write_bytes(pickle.dumps(job))
    out = subprocess.run([sys.executable, "-c", _EVAL_IN_A_FRESH_PROCESS, str(tmp_path / "job.pickle")],
                         capture_output=True, text=True,
                         check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["test_samples"] == 9000 and 0.0 <= result["accuracy"]["knn"] <= 1.0
    assert result["peak_memory_bytes"] - result["before"] < bound, (result["peak_memory_bytes"] - result["before"]) / 2**20
