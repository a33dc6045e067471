"""The scheduler: submits train and eval jobs as their inputs appear, and follows them to the end.

    train(m, 1) → train(m, 2) → … → train(m, T)          each method's tasks in order, from c_0
    eval(c_i, j) for every task j, as soon as c_i exists  (overlaps training of task i+1)

A chain of train tasks is one Ray Train job whose workers train them one after another
(``crdist/train/ray_train.py``). There are as many chains as the cluster can train at once: with
one slot (a small machine), every method's tasks in one job, method after method; with a slot per
method, a job per method, side by side. A worker group costs seconds to start (tens on a busy
2-core machine), often more than a small study's task trains, so a method waiting its turn gains
nothing from a job of its own. The driver sees task i done when c_i's weights appear (written
last, atomically) and starts its evaluations while the workers go on to the next task. In the
journal each task is still a job of its own: ``train/<method>/<i>`` started, finished or stopped.

A job whose output already exists (from an earlier, interrupted run of the same study) is not run
again. Every job start, finish and stop goes into the run's journal.
"""

from __future__ import annotations

import json
import math
import queue
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

from crdist import audit
from crdist.atomic import DiskFull
from crdist.data.manifest import Manifest
from crdist.errors import CrdistError
from crdist.evaluate.job import EvalJob, write_evaluation
from crdist.orchestrate.console import Console
from crdist.orchestrate.journal import Journal
from crdist.rundir import RunDir
from crdist.train.job import TaskResult, TrainJob, summary_path


class StudyError(CrdistError, RuntimeError):
    pass


class StudyStopped(CrdistError, RuntimeError):
    """The driver was asked to stop (SIGTERM or Ctrl-C) and stopped cleanly."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


@dataclass
class _Job:
    kind: str  # "train" or "eval"
    key: str  # the journal's name for it, e.g. "train/sgd/2" or "eval/sgd/c_2/1"
    label: str
    method: str | None
    row: int
    task: int  # a train job: the task its workers are training now
    # A train job: the (method, task) pairs its workers train, in order, and the index of the one
    # they are on (len(chain) once every one is done). ``method`` and ``task`` follow it.
    chain: list[tuple[str, int]] = field(default_factory=list)
    at: int = 0

    @property
    def done(self) -> bool:
        return self.at >= len(self.chain)


def eval_count(study, manifest: Manifest) -> int:
    return (1 + len(study.train.methods) * len(manifest.tasks)) * len(manifest.tasks)


class Scheduler:
    """Runs a study's jobs on Ray (``run_jobs``): train jobs that each train a chain of methods'
    tasks (as many chains as the cluster trains at once), an eval job per (checkpoint, task) as soon
    as the checkpoint exists, as many at once as the cluster holds."""

    def __init__(self, study, run_dir: RunDir, manifest: Manifest, console: Console, journal: Journal):
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from crdist.orchestrate.remote import StopFlag

        self.study = study
        self.run_dir = run_dir
        self.manifest = manifest
        self.console = console
        self.journal = journal
        self.finished_before = journal.finished()
        self.tasks = len(manifest.tasks)
        self.pending: dict = {}  # Ray object ref → the job it will return
        self.waiting_evals: deque[tuple[_Job, EvalJob]] = deque()  # started when a slot frees up
        self.waiting_trains: deque[tuple[_Job, list[TrainJob]]] = deque()  # likewise
        self.evals_done = 0
        self.evals_total = eval_count(study, manifest)
        self.accuracy = defaultdict(dict)  # checkpoint label → {task: {protocol: accuracy}}
        # Evaluations are a function of the weights and the task alone (common random numbers), so
        # a checkpoint whose weights equal an earlier one's (every c_i of `frozen` is c_0) takes
        # that one's results instead of computing them again.
        self.weights_digests: dict[tuple, str] = {}  # (method, row) → digest of its tensors
        self.first_with_digest: dict[str, tuple] = {}  # digest → the first (method, row) seen with it
        self.same_weights_waiting = defaultdict(list)  # (method, row, task) evaluated first → jobs waiting for it
        self.reused: dict[str, set[int]] = defaultdict(set)  # method → tasks whose sound weights an earlier run wrote
        # The driver's own actors live on its node: losing a worker node must not take them along.
        self.driver_node = ray.get_runtime_context().get_node_id()
        on_driver_node = NodeAffinitySchedulingStrategy(self.driver_node, soft=False)
        self.progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": on_driver_node})
        self.progress_lost = False
        self.stop_flag = StopFlag.options(scheduling_strategy=on_driver_node).remote()
        self.stop_signal = ""  # set by the driver's signal handler; the loop turns it into a stop
        self.stop_deadline: float | None = None
        self.stop_reason = ""

    # -- the loop -----------------------------------------------------------------------------

    def run_jobs(self) -> None:
        import ray

        for task in range(1, self.tasks + 1):
            self.submit_eval(None, 0, task)
        for methods in self.chains_of(self.study.train.methods):
            self.submit_train([(method, 1) for method in methods])
        while self.pending:
            if self.stop_signal:
                self.request_stop(self.stop_signal)
            if self.stop_deadline is not None and (
                time.monotonic() > self.stop_deadline or not any(j.kind == "train" for j in self.pending.values())
            ):
                break
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=0.5)
            self.drain_progress()
            self.follow_train_jobs()
            for ref in ready:
                self.finish(ref)
        self.drain_progress()
        if self.stop_deadline is not None:
            unfinished = [job.label for job in self.pending.values() if job.kind == "train"]
            raise StudyStopped(
                f"stopped on {self.stop_reason}"
                + (f"; train jobs still running at the deadline: {', '.join(unfinished)}" if unfinished else "")
                + ". Finished jobs and checkpoints are kept: run the same command again, or "
                f"crdist resume {self.run_dir.root}, to continue.",
                self.stop_reason,
            )

    def request_stop(self, reason: str) -> None:
        """Ask running train jobs to checkpoint and stop, and start nothing new."""
        if self.stop_deadline is not None:
            return
        import ray

        grace = self.study.checkpoint.grace_seconds
        self.stop_reason = reason
        self.stop_deadline = time.monotonic() + grace
        self.stop_flag.request.remote()
        for ref, job in list(self.pending.items()):
            if job.kind == "eval":  # quick to redo; not worth waiting for
                ray.cancel(ref, force=True)
                del self.pending[ref]
        self.waiting_evals.clear()
        self.waiting_trains.clear()
        self.journal.record("stop-requested", reason=reason)
        self.console.print(f"stop   {reason}: asking running train jobs to checkpoint and stop (grace {grace:.0f} s)")

    # -- submission ---------------------------------------------------------------------------

    def chains_of(self, methods: list[str]) -> list[list[str]]:
        """The methods dealt out over as many train jobs as the cluster can train at once (each
        keeps its order within a job): one job for all of them on a small machine, one job each
        where there are slots enough."""
        jobs = min(self.train_slots(), len(methods))
        return [methods[i::jobs] for i in range(jobs)]

    def submit_train(self, starts: list[tuple[str, int]]) -> None:
        """Queue one train job for each (method, task) of ``starts`` in turn: the method's tasks
        ``task`` … T, then the next method's. Tasks whose weights exist (from an earlier run of
        the study) and match their digests are reused instead; a damaged one is set aside and
        trained again; the job's workers pass over the tasks reused after it."""
        chain = [item for method, task in starts for item in self._to_train(method, task)]
        if not chain or self.stop_deadline is not None:
            return
        train_jobs = [
            TrainJob.from_study(
                self.study,
                method,
                task=t,
                num_tasks=self.tasks,
                shards=str(self.manifest.root),
                init_weights=str(self.run_dir.weights(method, t - 1).resolve()),
                output=str(self.run_dir.weights(method, t).resolve()),
                checkpoints=str(self.run_dir.checkpoints(method, t).resolve()),
                log_dir=str((self.run_dir.logs / "train").resolve()),
                init_state=str(self.run_dir.method_state(method, t - 1).resolve()) if t > 1 else None,
                output_state=str(self.run_dir.method_state(method, t).resolve()),
            )
            for method, t in chain
        ]
        self.waiting_trains.append((self._train_job(chain), train_jobs))
        self.start_waiting_trains()

    def _to_train(self, method: str, task: int) -> list[tuple[str, int]]:
        """The method's tasks from ``task`` on that its job goes through: none if every one is
        done already, else from the first one to train to T (the workers pass over reused ones)."""
        first = None  # the first task to train
        for t in range(task, self.tasks + 1):
            output = self.run_dir.weights(method, t)
            if t in self.reused[method]:
                continue
            if output.is_file():
                damage = audit.trained_task(self.run_dir, method, t)
                if damage is None:
                    self.console.print(f"train  {method} task {t}/{self.tasks}: already done, reusing "
                                       f"{output.relative_to(self.run_dir.root)}")
                    self._journal_finished_if_new(self._task_job(method, t), lambda: self._train_summary(method, t))
                    self.reused[method].add(t)
                    self.trained(method, t)
                    continue
                self.set_aside(damage, output, summary_path(output), self.run_dir.method_state(method, t))
            first = t if first is None else first
        return [] if first is None else [(method, t) for t in range(first, self.tasks + 1)]

    def set_aside(self, damage: audit.Damage, *paths) -> None:
        audit.set_aside(damage, self.run_dir.root, self.journal, self.console.print, *paths)

    def _task_job(self, method: str, task: int) -> _Job:
        """One task as the journal and the console name it."""
        return _Job("train", f"train/{method}/{task}", f"{method} task {task}/{self.tasks}", method, task, task)

    def _train_job(self, chain: list[tuple[str, int]]) -> _Job:
        job = self._task_job(*chain[0])
        job.chain = chain
        return job

    def start_waiting_trains(self) -> None:
        """Launch as many waiting train jobs as the cluster can train at once. A job launched beyond
        that would only wait for CPUs, yet hold a task and a Ray Train controller process (about
        1 GB each) the whole time: a study of 11 methods ran a 24 GB machine out of memory so."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from crdist.orchestrate.remote import fit_train_job

        free = self.train_slots() - sum(job.kind == "train" for job in self.pending.values())
        for _ in range(min(free, len(self.waiting_trains))):
            job, train_jobs = self.waiting_trains.popleft()
            # Launched from the driver's node: a worker node lost to preemption then takes only
            # workers with it, never the job's controller.
            ref = fit_train_job.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(self.driver_node, soft=False)
            ).remote(train_jobs, self.progress, self.stop_flag, self.run_dir.ray_storage.resolve(), self.study.name)
            self.pending[ref] = job
            self.journal.record("started", job.key, workers="new")

    def train_slots(self) -> int:
        """Train jobs the cluster's CPUs can run at once (at least one); asked each time, as
        nodes may come and go."""
        import ray

        train = self.study.train
        return max(1, math.floor(ray.cluster_resources().get("CPU", 0) / (train.workers * train.cpus_per_worker)))

    def submit_eval(self, method: str | None, row: int, task: int) -> None:
        checkpoint = RunDir.checkpoint_label(method, row)
        job = _Job("eval", f"eval/{checkpoint}/{task}", f"{checkpoint} × task {task}", method, row, task)
        output = self.run_dir.evaluation(method, row, task)
        damage = audit.evaluation(self.run_dir, method, row, task) if output.is_file() else None
        if damage is not None:
            self.set_aside(damage)
        elif output.is_file():
            self._journal_finished_if_new(job)
            self.evaluated(job, json.loads(output.read_text()))
            return
        if self.stop_deadline is not None:
            return
        first = self.first_with_same_weights(method, row)
        if first != (method, row):
            self.same_weights_waiting[(*first, task)].append(job)
            self.take_same_weights_results(*first, task)
            return
        eval_job = EvalJob.from_study(
            self.study,
            checkpoint=checkpoint,
            row=row,
            task=task,
            weights=str(self.run_dir.weights(method, row).resolve()),
            shards=str(self.manifest.root),
            output=str(output.resolve()),
        )
        self.waiting_evals.append((job, eval_job))
        self.start_waiting_evals()

    def first_with_same_weights(self, method: str | None, row: int) -> tuple:
        """The first checkpoint seen whose tensors equal (method, row)'s: itself, or one before it."""
        key = (method, row)
        if key not in self.weights_digests:
            digest = tensors_digest(self.run_dir.weights(method, row))
            self.weights_digests[key] = digest
            self.first_with_digest.setdefault(digest, key)
        return self.first_with_digest[self.weights_digests[key]]

    def take_same_weights_results(self, method: str | None, row: int, task: int) -> None:
        """(method, row) has been evaluated on ``task`` (or is about to be): the checkpoints with the
        same weights that wait for it take its result, under their own names."""
        source = self.run_dir.evaluation(method, row, task)
        if not source.is_file():
            return  # its own evaluation is still to finish: they take it then
        result = json.loads(source.read_text())
        for job in self.same_weights_waiting.pop((method, row, task), []):
            copy = {**result, "checkpoint": RunDir.checkpoint_label(job.method, job.row), "row": job.row,
                    "same_weights_as": result["checkpoint"], "seconds": 0.0}
            write_evaluation(self.run_dir.evaluation(job.method, job.row, task), copy)
            self.journal.record("finished", job.key, same_weights_as=result["checkpoint"])
            self.console.print(f"eval   {job.label}: same weights as {result['checkpoint']}, its result taken "
                               f"[{self.evals_done + 1}/{self.evals_total}]")
            self.evaluated(job, copy)

    def start_waiting_evals(self) -> None:
        from crdist.orchestrate.remote import run_eval_job

        if not self.waiting_evals:
            return
        cpus = self.study.evaluate.cpus
        free = self.eval_slots() - sum(job.kind == "eval" for job in self.pending.values())
        for _ in range(min(free, len(self.waiting_evals))):
            job, eval_job = self.waiting_evals.popleft()
            ref = run_eval_job.options(**self.eval_resources()).remote(eval_job, max(1, int(cpus)))
            self.pending[ref] = job

    def eval_resources(self) -> dict:
        cfg = self.study.evaluate
        resources = {"num_cpus": cfg.cpus, "num_gpus": cfg.gpus}
        if cfg.memory_gib:
            resources["memory"] = int(cfg.memory_gib * 2**30)
        return resources

    def eval_slots(self) -> int:
        """How many evaluations may run at once. Ray has no priorities: evaluations submitted
        freely would take every CPU and hold back the train job waiting for them, which is the
        study's critical path; once training is over they take every CPU. Asked of the cluster
        each time, as nodes may come and go."""
        import ray

        if self.study.evaluate.concurrent:
            return self.study.evaluate.concurrent
        train = self.study.train
        spare = ray.cluster_resources().get("CPU", 0)
        if self.waiting_trains or any(job.kind == "train" for job in self.pending.values()):
            spare -= train.workers * train.cpus_per_worker
        # else every chain is done (a train job is only ever submitted when one finishes), so the
        # evaluations left may take every CPU.
        return max(1, math.floor(spare / self.study.evaluate.cpus))

    def _journal_finished_if_new(self, job: _Job, fields=lambda: {}) -> None:
        # Output written but never journalled: the driver died between the two (a train job's kept
        # workers can finish a task in the half second before the driver's next look).
        if job.key not in self.finished_before:
            self.journal.record("finished", job.key, recovered=True, **fields())

    def _train_summary(self, method: str, task: int) -> dict:
        """What the journal keeps of a trained task, read from the summary its workers wrote beside
        c_i: whichever driver finds c_i journals the same."""
        result = TaskResult.read(self.run_dir.weights(method, task))
        return {"steps": result.steps, "resumed_from": result.resumed_from}

    # -- completion ---------------------------------------------------------------------------

    def follow_train_jobs(self) -> None:
        for job in [job for job in self.pending.values() if job.kind == "train"]:
            self.follow_train_job(job)

    def follow_train_job(self, job: _Job) -> None:
        """Take in every task the train job has finished since last asked: their weights exist.
        (Tasks reused from an earlier run, which its workers pass over, were taken in already.)"""
        while not job.done and self.run_dir.weights(job.method, job.task).is_file():
            if job.task in self.reused[job.method]:
                self.next_task(job)
            else:
                self.task_trained(job)

    def next_task(self, job: _Job) -> None:
        before = f"{job.method}/{job.task}"
        job.at += 1
        if not job.done:
            fresh = self._task_job(*job.chain[job.at])
            job.key, job.label, job.row, job.method, job.task = fresh.key, fresh.label, fresh.row, fresh.method, fresh.task
            if job.task not in self.reused[job.method]:
                self.journal.record("started", job.key, workers="kept", after=before)

    def task_trained(self, job: _Job) -> None:
        """The train job's current task is done: journal it, start its evaluations, and move the job
        on to the task its workers are training next."""
        method, task = job.method, job.task
        result = json.loads(summary_path(self.run_dir.weights(method, task)).read_text())
        self.journal.record("finished", job.key, steps=result["steps"], resumed_from=result["resumed_from"])
        self.console.print(
            f"train  {job.label} done: {result['steps']} steps"
            + (f" (resumed at step {result['resumed_from']})" if result["resumed_from"] else "")
            + f" in {result['seconds']:.1f} s ({result['samples_per_second']:,.0f} samples/s), "
            f"loss {result['first_loss']:.3f} → {result['final_loss']:.3f}"
            + _peak_memory(result)
        )
        self.console.record({"kind": "train_done", "job": job.label, **result, "method": method, "task": task})
        self.next_task(job)
        self.trained(method, task)

    def finish(self, ref) -> None:
        import ray

        job = self.pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as err:
            if job.kind == "train" and self._train_again(job, err):
                return
            # A job failed for good: stop and say which job and where to look.
            try:
                self.journal.record("failed", job.key, error=_root_cause(err))
            except DiskFull:
                pass  # a full disk: the job's own error (below) says so and what to do; a resume needs no such line
            raise StudyError(
                f"{job.kind} job '{job.label}' failed: {_root_cause(err)}\n"
                f"Logs: {self.run_dir.logs} (driver.log, train/*.log); Ray's own logs under "
                f"/tmp/ray/session_latest/logs"
            ) from err
        if job.kind == "eval":
            self.journal.record("finished", job.key)
            scores = "  ".join(f"{p} {a:.3f}" for p, a in result["accuracy"].items())
            self.console.print(
                f"eval   {job.label}: {scores}  ({result['seconds']:.1f} s) [{self.evals_done + 1}/{self.evals_total}]"
            )
            self.evaluated(job, result)
            self.take_same_weights_results(job.method, job.row, job.task)
            self.start_waiting_evals()
        else:
            self.follow_train_job(job)
            if not job.done:  # it returned before its last task: stopped on request
                self.journal.record("stopped", job.key)
                self.console.print(f"train  {job.label}: stopped after its checkpoint")
        if job.kind == "train":
            self.start_waiting_trains()  # its slot is free
            self.start_waiting_evals()  # after the last train job, evaluations may take its CPUs

    def _train_again(self, job: _Job, err: Exception) -> bool:
        """A train job that failed for good (Ray Train's restarts spent) after finishing one of its
        tasks or more is started again from the task it was on, with a fresh budget: the budget
        is then one per task's worth of progress, as a job per task would have it. A job that
        finished none fails the study."""
        self.follow_train_job(job)
        if "DiskFull: " in _root_cause(err):
            return False  # no room: starting again would only fail again; the error says what to do
        if job.done:  # every task's weights are written: it failed on its way out
            self.console.print(f"warn   train {_chain_label(job.chain)}: its job failed after its last task "
                               f"({_root_cause(err)}); every task's weights are written")
        elif job.at == 0 or self.stop_deadline is not None:
            return False
        else:
            self.journal.record("failed", job.key, error=_root_cause(err), again=True)
            self.console.print(f"warn   train {job.label} failed after its job finished "
                               f"{_chain_label(job.chain[:job.at])} ({_root_cause(err)}); starting its workers "
                               "again from this task")
            rest = job.chain[job.at:]
            self.submit_train([item for k, item in enumerate(rest) if k == 0 or rest[k - 1][0] != item[0]])
        self.start_waiting_trains()
        self.start_waiting_evals()
        return True

    def trained(self, method: str, task: int) -> None:
        """c_task exists: evaluate it on every task."""
        for j in range(1, self.tasks + 1):
            self.submit_eval(method, task, j)

    def evaluated(self, job: _Job, result: dict) -> None:
        self.evals_done += 1
        checkpoint = RunDir.checkpoint_label(job.method, job.row)
        done = self.accuracy[checkpoint]
        done[job.task] = result["accuracy"]
        self.console.record({"kind": "eval_done", **result})
        if len(done) == self.tasks:
            means = "  ".join(
                f"{p} {sum(r[p] for r in done.values()) / self.tasks:.3f}" for p in self.study.evaluate.protocols
            )
            self.console.print(
                f"eval   {checkpoint} on tasks 1–{self.tasks}: mean accuracy {means}  "
                f"[{self.evals_done}/{self.evals_total} evals]"
            )

    def drain_progress(self) -> None:
        import ray

        while not self.progress_lost:
            try:
                event = self.progress.get_nowait()
            except queue.Empty:
                return
            except ray.exceptions.RayError as err:  # progress is best effort; the jobs go on
                self.progress_lost = True
                self.console.print(f"warn   progress reports lost ({type(err).__name__}); jobs continue")
                return
            self.console.record(event)
            self.console.print(_describe_event(event))
            if event["kind"] == "damaged":  # a mid-task checkpoint the workers set aside
                self.journal.record("damaged", f"train/{event['method']}/{event['task']}", file=event["file"],
                                    reason=event["reason"], redo=event["action"])


def _chain_label(chain: list[tuple[str, int]]) -> str:
    """[(sgd, 1), (sgd, 2), (lpft, 1)] → "sgd tasks 1–2, lpft task 1"."""
    parts = []
    for method in dict.fromkeys(m for m, _ in chain):
        tasks = [t for m, t in chain if m == method]
        parts.append(f"{method} task {tasks[0]}" if len(tasks) == 1 else f"{method} tasks {tasks[0]}–{tasks[-1]}")
    return ", ".join(parts)


def tensors_digest(path) -> str:
    """sha256 of a safetensors file's tensors (their header entries and bytes) without its metadata:
    two files of the same weights differ there (which checkpoint each is)."""
    import hashlib
    import struct

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        digest.update(json.dumps(header, sort_keys=True).encode())
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _describe_event(event: dict) -> str:
    job = f"{event['method']} task {event['task']}/{event.get('tasks', '?')}"
    if event["kind"] == "start":
        if event["step"]:
            return f"train  {job}: resuming from the checkpoint at step {event['step']}/{event['steps']}"
        return f"train  {job}: started, {event['steps']} steps"
    if event["kind"] == "damaged":
        return f"damaged {job}: checkpoint {event['file']}: {event['reason']}; set aside, {event['action']}"
    if event["kind"] == "checkpoint":
        nodes = event.get("preempted_nodes")
        why = f" (node {', '.join(n[:12] for n in nodes)} is being preempted)" if nodes else ""
        return f"ckpt   {job}: step {event['step']} saved{why}" + (", stopping" if event["stopping"] else "")
    return (
        f"train  {job}  step {event['step']:>4}/{event['steps']}  {event['phase']:<8} loss {event['loss']:.4f}  "
        f"lr {event['lr']:.2e}  {event['samples_per_s']:,.0f} samples/s"
    )


def _root_cause(err: BaseException) -> str:
    """The innermost error behind Ray's wrappers (task errors, Ray Train's worker-group error)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "worker_failures", None)  # ray.train.WorkerGroupError: rank → error
        if failures:
            rank = min(failures)
            return f"rank {rank}: {_root_cause(failures[rank])}"
        inner = getattr(err, "cause", None) or err.__cause__
        if inner is None:
            break
        err = inner
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        return text.splitlines()[-1]  # a re-raised error (e.g. from a loader process): its last line
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _peak_memory(result: dict) -> str:
    """", peak 1.2 GiB per rank (RSS)": the largest rank's; the summary file has each rank's."""
    peaks = result.get("peak_memory_bytes") or []
    if not peaks:
        return ""
    kind = "RSS" if result.get("memory_measure") == "cpu-rss" else "CUDA"
    return f", peak {max(peaks) / 2**30:.2f} GiB per rank ({kind})" + (
        f", MFU {result['mfu']:.1%}" if result.get("mfu") is not None else "")
