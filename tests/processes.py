"""Run groups of real worker processes on localhost, and the scripts of docs/distributed.md."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = os.path.join(ROOT, "tests", "workers")


def free_ports(n: int) -> list[int]:
    """`n` localhost ports free right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_all(commands: list[list[str]], logs: list[str], env: dict[str, str] | list[dict[str, str]],
            timeout: float, cwd: str = ROOT) -> float:
    """Run the commands at once; kill them all when `timeout` seconds pass.
    Asserts that none hung and all exited with 0; returns the wall time.
    A hung worker first gets SIGABRT, on which Python's fault handler writes
    every thread's stack to its log, so the failure shows where it hung."""
    envs = env if isinstance(env, list) else [env] * len(commands)
    envs = [dict(e, PYTHONFAULTHANDLER="1") for e in envs]
    start = time.monotonic()
    procs = []
    for cmd, log, e in zip(commands, logs, envs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=e, cwd=cwd))
    try:
        for p in procs:
            p.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        timed_out = [p for p in procs if p.poll() is None]
        for p in timed_out:
            p.send_signal(signal.SIGABRT)
        for p in timed_out:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for p in procs:
            p.wait()
    tails = "\n".join(f"--- {log}\n" + _tail(log) for log in logs)
    assert not timed_out, f"killed after {timeout} s (a worker hung):\n{tails}"
    codes = [p.returncode for p in procs]
    assert codes == [0] * len(procs), f"exit codes {codes}:\n{tails}"
    return time.monotonic() - start


def _tail(log: str) -> str:
    """The end of a worker's log: its last 3000 characters, and the stack
    dump of a hung worker (from its first "Fatal Python error") whole."""
    with open(log) as f:
        text = f.read()
    dump = text.find("Fatal Python error")
    return text[-3000:] if dump < 0 else text[max(0, dump - 1500):][-12000:]


def readme_script(after: str, page: str = "docs/distributed.md") -> str:
    """The first ```python block of the documentation `page` (the README's distributed
    section moved there) after the line holding `after`."""
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    return text[start:text.index("```", start)]


def run_once(root: Path, make: Callable[[Path], None]) -> None:
    """Run `make(root)` once per test run, even when pytest-xdist spreads a
    module's tests over workers: the first one to get here runs it, the others
    wait and read what it left in `root` (a failed try is run again)."""
    import fcntl
    import shutil

    root.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".done").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            make(root)
            (root / ".done").touch()


def shared_root(tmp_path_factory: Any, name: str) -> Path:
    """A folder every pytest-xdist worker of this test run finds under `name` (one per run without xdist)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return tmp_path_factory.mktemp(name)
    return tmp_path_factory.getbasetemp().parent / name
