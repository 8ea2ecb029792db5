"""SIGTERM and process pools: the main process exits with 143 and leaves no process behind."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rsna.preprocess.runner import JOURNAL_NAME
from rsna.sample import write_sample_dataset
from rsna.signals import EXIT_STATUS_SIGTERM, Terminated, process_pool, sigterm_raises

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# Seconds allowed from SIGTERM to the exit of the main process, then to that of every
# process it started. Both take under one second on an idle 2-core machine.
EXIT_TIMEOUT_S = 10.0
CHILDREN_TIMEOUT_S = 5.0


def test_sigterm_raises_terminated_with_status_143():
    with sigterm_raises(), pytest.raises(Terminated) as caught:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    assert caught.value.code == 143
    assert EXIT_STATUS_SIGTERM == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_raises_ignores_repeated_signal():
    with sigterm_raises():
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        # The cleanup after the first SIGTERM must not be interrupted by a second one.
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)


def test_sigterm_raises_keeps_handler_of_application():
    received = []

    def handler(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)

    assert received == [signal.SIGTERM]


def _sleep_and_return_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_process_pool_terminates_workers_on_error():
    # Earlier tests in this process may have left a forkserver running: count only new
    # children.
    earlier = _descendants(os.getpid())
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="stop here"), process_pool(2) as executor:
        futures = [executor.submit(_sleep_and_return_pid, 60) for _ in range(4)]
        workers = _wait_for_new_children(os.getpid(), count=2, earlier=earlier)
        raise RuntimeError("stop here")

    assert time.monotonic() - started < 30
    assert all(future.cancelled() or future.done() for future in futures)
    assert _still_alive(workers, timeout_s=CHILDREN_TIMEOUT_S) == {}


def test_process_pool_waits_for_work_without_error():
    with process_pool(2) as executor:
        pids = set(executor.map(_sleep_and_return_pid, [0.01] * 4))

    assert 1 <= len(pids) <= 2
    assert os.getpid() not in pids


def test_sigterm_stops_preprocess_and_its_workers(tmp_path):
    data = tmp_path / "data"
    write_sample_dataset(data, series=24, seed=5, workers=2)
    out = tmp_path / "out"
    # 0.25 mm slices make each series take about 0.2 s, so 24 series keep two workers busy
    # for seconds after the first volume is written.
    command = [sys.executable, "-m", "rsna.cli", "preprocess"]
    command += [str(path) for path in sorted((data / "series").iterdir())]
    command += ["--out", str(out), "--workers", "2", "--spacing-mm", "0.25", "1", "1"]

    process, stderr, children = _start_and_record(
        command, tmp_path, ready=lambda: _has_lines(out / JOURNAL_NAME), min_children=3
    )
    status, survivors = _send_sigterm(process, children)

    log = stderr.read_text()
    assert survivors == {}, f"still running after SIGTERM: {survivors}"
    assert status == 143, log
    assert log.count("received SIGTERM") == 1
    assert [p.name for p in out.iterdir() if p.name.startswith(".tmp-")] == []
    assert (out / JOURNAL_NAME).is_file()
    assert not (out / "index.jsonl").exists()


def test_sigterm_stops_sample_and_its_workers(tmp_path):
    out = tmp_path / "sample"
    command = [sys.executable, "-m", "rsna.cli", "sample", str(out), "--series", "400"]
    command += ["--workers", "2", "--matrix", "32", "--slices", "16"]

    process, stderr, children = _start_and_record(
        command, tmp_path, ready=lambda: True, min_children=2
    )
    status, survivors = _send_sigterm(process, children)

    log = stderr.read_text()
    assert survivors == {}, f"still running after SIGTERM: {survivors}"
    assert status == 143, log
    assert log.count("received SIGTERM") == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


# ---------------------------------------------------------------------------------------
# Processes from /proc


def _start_and_record(command, cwd, *, ready, min_children):
    """Start ``command``, wait until ``ready()`` and ``min_children`` descendants exist.

    Returns the process, the path of its standard error and ``{pid: start time}`` of its
    descendants at that moment.
    """
    stderr = cwd / "stderr.log"
    env = {**os.environ, "RSNA_NO_PROGRESS": "1"}
    with open(stderr, "w") as handle:
        process = subprocess.Popen(command, cwd=cwd, env=env, stderr=handle)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"command ended with {process.returncode} before SIGTERM: {command[:4]}")
        children = _descendants(process.pid)
        if len(children) >= min_children and ready():
            return process, stderr, children
        time.sleep(0.01)
    _end_processes(process, _descendants(process.pid))
    pytest.fail(f"command never had {min_children} child processes: {command[:4]}")


def _wait_for_new_children(pid: int, *, count: int, earlier: dict[int, str]) -> dict[int, str]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = {
            child: start_time
            for child, start_time in _descendants(pid).items()
            if earlier.get(child) != start_time
        }
        if len(children) >= count:
            return children
        time.sleep(0.01)
    pytest.fail(f"process {pid} never had {count} new child processes")


def _has_lines(path: Path) -> bool:
    return path.is_file() and path.read_text().count("\n") >= 1


def _process_table() -> dict[int, tuple[int, str, str]]:
    """Return ``{pid: (parent pid, state, start time)}`` of every process in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in brackets may contain spaces: split after its last ")".
        fields = text.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def _descendants(root: int) -> dict[int, str]:
    """Return ``{pid: start time}`` of the children of ``root``, their children and so on."""
    table = _process_table()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (parent_pid, _, start_time) in table.items():
            if parent_pid == parent and pid not in found:
                found[pid] = start_time
                frontier.append(pid)
    return found


def _still_alive(processes: dict[int, str], *, timeout_s: float) -> dict[int, str]:
    """Wait up to ``timeout_s`` for ``processes`` to end, then return those alive, with state.

    A zombie has ended, and a process id with another start time was reused.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        table = _process_table()
        alive = {
            pid: table[pid][1]
            for pid, start_time in processes.items()
            if pid in table and table[pid][2] == start_time and table[pid][1] != "Z"
        }
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _send_sigterm(process: subprocess.Popen, children: dict[int, str]) -> tuple[int, dict]:
    """Send SIGTERM; return the exit status and the children still alive afterwards."""
    try:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=EXIT_TIMEOUT_S)
        survivors = _still_alive(children, timeout_s=CHILDREN_TIMEOUT_S)
    finally:
        _end_processes(process, children)
    return status, survivors


def _end_processes(process: subprocess.Popen, children: dict[int, str]) -> None:
    """Kill the command, if still running, and every recorded child still alive."""
    if process.poll() is None:
        process.kill()
    process.wait()
    for pid in _still_alive(children, timeout_s=0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
