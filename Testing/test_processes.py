"""segshap.processes: a process tree found and ended whole (with /proc and with psutil), and signals held back
while a block must not be cut short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from segshap import processes
from segshap.processes import DeferredSignals, descendants, end_process_tree, process_alive

# A parent that starts a child which ignores SIGTERM (only SIGKILL ends it), then waits.
TREE = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""


def _tree() -> tuple[subprocess.Popen, int]:
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    return parent, int(parent.stdout.readline())


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("source", ["proc", "psutil"])
def test_a_tree_is_found_and_ended_whole_even_a_child_that_ignores_sigterm(source, monkeypatch, tmp_path):
    if source == "psutil":
        pytest.importorskip("psutil")
        monkeypatch.setattr(processes, "PROC", tmp_path / "no-proc")  # as on macOS
    elif not processes.PROC.is_dir():
        pytest.skip("no /proc here")
    parent, child = _tree()
    try:
        assert child in descendants(parent.pid)
        end_process_tree(parent.pid, grace_s=0.5)
        parent.wait(timeout=30)  # reaps the parent; the orphaned child is reaped by init
        deadline = time.monotonic() + 30
        while process_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(child)
    finally:
        for pid in (parent.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_deferred_signals_are_recorded_inside_the_block_and_delivered_after_it():
    # Python's own Ctrl-C handler, set here: a suite started in the background of a script inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached_end_of_block = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with DeferredSignals() as signals:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C does not cut the block short either
                time.sleep(0.05)
                assert signals.received == [signal.SIGINT, signal.SIGINT]
                reached_end_of_block = True
        assert reached_end_of_block
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_deferred_signal_goes_to_the_callers_own_handler_or_its_default_action():
    delivered = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: delivered.append(signum))
    try:
        with DeferredSignals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert delivered == []
        assert delivered == [signal.SIGTERM]  # once, after the block
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Where the caller left the default action, the process ends by the signal once the block is done.
    script = (
        "import os, signal, time\nfrom segshap.processes import DeferredSignals\n"
        "with DeferredSignals():\n    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.05)\n"
        "    print('end of block', flush=True)\nprint('after the block', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM and done.stdout == "end of block\n", done.stderr
