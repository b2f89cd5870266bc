"""Every ```python block of README.md and docs/*.md runs as written, each in a fresh process.

A block may be marked by an HTML comment on the line just above it:
`<!-- backend: tensorflow -->` (runs only on that backend), or
`<!-- skip: reason -->` (never run here; the reason names where it is tested).
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import BACKEND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "jax", "torch")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
MARK = re.compile(r"<!--\s*(skip|backend):\s*(.*?)\s*-->")


def markdown_files() -> list[str]:
    return ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def python_blocks(relpath: str) -> list[tuple[int, str, tuple[str, str] | None]]:
    """(line, code, mark) of each ```python block; mark is the comment just above it, if any."""
    with open(os.path.join(ROOT, relpath)) as f:
        text = f.read()
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(1) != "python":
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.fullmatch(before.strip())
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(2), mark.groups() if mark else None))
    return blocks


BLOCKS = [(path, line, code, mark) for path in markdown_files() for line, code, mark in python_blocks(path)]
# A block repeated word for word (a README quickstart on its docs page) runs once, named by every place.
UNIQUE: dict[str, tuple[list[str], tuple[str, str] | None]] = {}
for _path, _line, _code, _mark in BLOCKS:
    UNIQUE.setdefault(_code, ([], _mark))[0].append(f"{_path}:{_line}")


def test_the_blocks_are_found_and_marked_right():
    readme = [b for b in BLOCKS if b[0] == "README.md"]
    assert len(readme) >= 3 and all(mark is None for *_, mark in readme), "README's quickstarts run everywhere"
    for path, line, _, mark in BLOCKS:
        if mark and mark[0] == "backend":
            assert mark[1] in BACKENDS, f"{path}:{line}: unknown backend {mark[1]!r}"
        if mark and mark[0] == "skip":
            assert len(mark[1]) > 10, f"{path}:{line}: a skipped block needs a reason"


@pytest.mark.slow
@pytest.mark.parametrize(("places", "code", "mark"), [(p, c, m) for c, (p, m) in UNIQUE.items()],
                         ids=[",".join(p) for p, _ in UNIQUE.values()])
def test_python_block_runs_as_written(places, code, mark, tmp_path):
    if mark and mark[0] == "skip":
        pytest.skip(mark[1])
    if mark and mark[0] == "backend" and mark[1] != BACKEND:
        pytest.skip(f"a {mark[1]} block (KERAS_BACKEND={BACKEND})")
    # The feature pages feed made-up values to a model they do not train: on JAX keras-best rightly
    # says the weights never changed (runner/stale.py, tested in test_backends.py).
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONWARNINGS="ignore:The model's weights did not change since the last update")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, f"{', '.join(places)} failed:\n{done.stderr[-3000:]}"
    # An example that draws a warning (from keras-best, or Keras loading it) shows the wrong way.
    warned = [line for line in done.stderr.splitlines() if "Warning:" in line]
    assert not warned, f"{', '.join(places)} warns:\n" + "\n".join(warned)
    print(f"{', '.join(places)}: {time.monotonic() - start:.1f} s")


def test_readme_links_name_files_that_exist():
    # mkdocs --strict checks the links of docs/; this checks README's (docs pages, notebooks, code).
    with open(os.path.join(ROOT, "README.md")) as f:
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read())
    local = [t for t in targets if "://" not in t]
    assert len(local) >= 10
    missing = [t for t in local if not os.path.exists(os.path.join(ROOT, t))]
    assert not missing, f"README links to missing files: {missing}"
