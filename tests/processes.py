"""Run groups of real worker processes on localhost, and the scripts of docs/distributed.md."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

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
