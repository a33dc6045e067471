"""The driver's own files on a disk that refuses writes: the journal stops the study with an error
that says so and mends its torn line afterwards; the log and the event file keep what they could not
write and write it, in order, once there is room. A disk is made full for real by a file-size limit
(RLIMIT_FSIZE: writes past it fail with EFBIG, as a full disk fails with ENOSPC), in a subprocess of
its own so that the limit touches nothing else."""

import json
import subprocess
import sys
import textwrap

from tests.helpers import ROOT

LIMITED = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

def room(limit):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
"""


def run(tmp_path, code: str) -> subprocess.CompletedProcess:
    script = LIMITED + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "TMP": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    return result


def test_a_journal_that_finds_no_room_says_so_and_its_next_line_starts_a_line_of_its_own(tmp_path):
    result = run(tmp_path, """
        import os
        from pathlib import Path
        from crdist.atomic import DiskFull
        from crdist.orchestrate.journal import Journal
        journal = Journal(Path(os.environ["TMP"]) / "journal.jsonl")
        journal.record("started", "train/sgd/1")
        room(journal.path.stat().st_size + 10)  # the next line gets 10 bytes in, then the disk is full
        try:
            journal.record("finished", "train/sgd/1", steps=4)
        except DiskFull as err:
            print(err)
        room(resource.RLIM_INFINITY)
        journal.record("finished", "train/sgd/1", steps=4)
        print([e["event"] for e in journal.entries()])
    """)
    said, entries = result.stdout.splitlines()
    assert said.startswith(f"{tmp_path}: no room to write its journal (journal.jsonl)")
    assert said.endswith("Everything written before it is intact: make room there and run the same command "
                         "again to continue")
    assert entries == "['started', 'finished']"  # the torn line is passed over, the next one read
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len(lines[1]) == 10


def test_the_drivers_log_and_events_wait_for_room_and_go_out_in_order(tmp_path):
    result = run(tmp_path, """
        import os
        from pathlib import Path
        from crdist.orchestrate.console import Console
        console = Console(Path(os.environ["TMP"]))
        console.print("first")
        console.record({"kind": "train", "step": 1})
        room(30)  # both files are already past 30 bytes: nothing more fits
        console.print("second")
        console.record({"kind": "train", "step": 2})
        console.print("third")
        room(resource.RLIM_INFINITY)
        console.record({"kind": "train", "step": 3})
        console.print("fourth")
        console.close()
    """)
    log = [line.split("] ", 1)[1] for line in (tmp_path / "driver.log").read_text().splitlines()]
    assert log == ["first", "second", "third", "fourth"]
    events = [json.loads(line)["step"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events == [1, 2, 3]
    # The terminal got every line at once, and one warning that the disk refused them.
    assert [line.split("] ", 1)[1] for line in result.stdout.splitlines()] == ["first", "second", "third", "fourth"]
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("warn   no room to write ") and "keeps its log lines and events in memory" in warning


def test_a_workers_log_that_finds_no_room_does_not_replace_the_tasks_own_error(tmp_path):
    """The worker closes its task's log in a ``finally``: a close whose flush finds no room must
    leave the task's error (a DiskFull that says what to do) as the one that reaches the driver."""
    result = run(tmp_path, """
        import logging, os
        from pathlib import Path
        from crdist.atomic import DiskFull
        from crdist.train.worker import _log_to_file, _stop_logging_to
        handler = _log_to_file(Path(os.environ["TMP"]) / "sgd-task1-rank0.log")
        logging.raiseExceptions = False  # the emit's own complaint is not what is tested here
        room(0)
        try:
            try:
                raise DiskFull(28, "checkpoints/sgd/task-1: no room to write the checkpoint step-000010")
            finally:
                logging.getLogger("crdist.train").error("the task failed")  # its flush fails: kept in the buffer
                _stop_logging_to(handler)
        except DiskFull as err:
            print(f"raised {type(err).__name__}: {err}")
    """)
    assert result.stdout.strip() == "raised DiskFull: checkpoints/sgd/task-1: no room to write the checkpoint step-000010"
