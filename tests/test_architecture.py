"""The package's architecture, read from its source (AST: nothing is imported).

- Layers: every `keras_best` import inside a layer folder points to a lower
  layer or to its own folder, and no module imports itself back through
  others (lazy imports inside functions included).
- Keras internals: only `keras_best/keras_adapter/` (and the KerasTuner
  integration: KerasTuner offers no public hooks) touches a private
  attribute (`x._name`, `getattr(x, "_name")`) or imports `keras.src` /
  `tensorflow.python`.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_best"

# Top to bottom: an import may point to a lower rank or to its own folder.
RANK = {"core": 0, "keras_adapter": 0, "storage": 1, "engines": 2, "training_state": 2, "runner": 3,
        "frontends": 4, "integrations": 5, "cli": 6}
TOP = max(RANK.values()) + 1  # keras_best/__init__.py and the top-level re-export shims
# The public package (`keras_best` and its shims) is imported by the command line
# only, as a user's script imports it (`keras-best demo`, `--version`).
PUBLIC_USERS = {"cli"}

# Where Keras/TensorFlow internals may be used.
ADAPTER = ("keras_best/keras_adapter/", "keras_best/integrations/keras_tuner.py")
PRIVATE_MODULES = ("keras.src", "tensorflow.python")
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}
OWN = {"self", "cls"}


# ------------------------------------------------------------------ helpers
def sources() -> dict[str, pathlib.Path]:
    """`dotted module name -> path` of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(module: str, path: pathlib.Path, known: set[str]) -> list[tuple[int, str]]:
    """`(line, module)` of every `keras_best` module `module` imports, at the
    top or inside a function (`from pkg import submodule` names the submodule)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up `level - 1` folders
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((node.lineno, full if full in known else base))
    return [(line, m) for line, m in out if m == "keras_best" or m.startswith("keras_best.")]


def rank(module: str) -> tuple[str | None, int]:
    """`(layer folder, rank)` of a module; top-level modules rank above every layer."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1], RANK[parts[1]]
    return None, TOP


def graph() -> dict[str, set[str]]:
    modules = sources()
    known = set(modules)
    out: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for _, target in imported(module, path, known):
            while target not in known:  # a name from a module: the module
                target = target.rpartition(".")[0]
            if target != module:
                targets.add(target)
        out[module] = targets
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def private_access(source: str, path: str) -> list[str]:
    """`path:line expr` for each private access in `source`: an import of
    `keras.src` / `tensorflow.python`, `x._name` (one leading underscore, not
    a dunder) on anything but `self`, `cls` or `super()`, and
    `getattr/setattr/hasattr/delattr(x, "_name", ...)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names])
            if any(n == m or n.startswith(m + ".") for n in names for m in PRIVATE_MODULES):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not _own(node.value):
            found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ATTRIBUTE_FUNCTIONS and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value) and not _own(node.args[0])):
            found.append((node.lineno, ast.unparse(node)))
    return [f"{path}:{line} {expr}" for line, expr in sorted(set(found))]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own(value: ast.expr) -> bool:
    """`self`, `cls` or `super()`: an object's own attributes."""
    if isinstance(value, ast.Name):
        return value.id in OWN
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"


def outside_the_adapter() -> dict[str, str]:
    """`relative path -> source` of every module that may not use Keras internals."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(ADAPTER):
            out[rel] = path.read_text(encoding="utf-8")
    return out


# -------------------------------------------------------------------- tests
def test_every_import_points_down_or_within_its_folder():
    modules = sources()
    upward = []
    for module, path in modules.items():
        layer, own = rank(module)
        if layer is None:
            continue  # keras_best/__init__.py and the top-level re-export shims
        for line, target in imported(module, path, set(modules)):
            folder, theirs = rank(target)
            if folder is None and layer in PUBLIC_USERS:
                continue
            if folder != layer and theirs >= own:
                upward.append(f"{path.relative_to(ROOT).as_posix()}:{line} ({layer}) -> {target}")
    assert upward == []


def test_no_import_cycles():
    edges = graph()
    assert "keras_best.storage.buffers" in edges and edges["keras_best.engines.weights_h5"]  # the graph is read
    assert cycles(edges) == []


def test_cycles_are_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_only_the_adapter_touches_keras_internals():
    violations = [v for rel, source in outside_the_adapter().items() for v in private_access(source, rel)]
    assert violations == []


def test_a_planted_private_access_in_a_front_end_is_reported():
    rel = "keras_best/frontends/callback.py"
    source = (ROOT / rel).read_text(encoding="utf-8")
    planted = source.rstrip("\n") + "\nmodel._initial_epoch = 1\nfrom keras.src import x\n"
    lines = len(source.rstrip("\n").split("\n"))
    new = set(private_access(planted, rel)) - set(private_access(source, rel))
    assert new == {f"{rel}:{lines + 1} model._initial_epoch", f"{rel}:{lines + 2} from keras.src import x"}


def test_the_checker_knows_private_access_from_public_and_own():
    source = "\n".join([
        "import keras",
        "import tensorflow.python.ops as ops",
        "from tensorflow import python",
        "x = model.optimizer._trainable_variables",
        "y = getattr(metric, '_direction', None)",
        "setattr(model, '_initial_epoch', 3)",
        "z = self._own + cls._shared + super()._base() + obj.__class__ + getattr(obj, '__name__')",
        "w = keras.ops.convert_to_numpy(model.weights[0]) + getattr(model, name) + model.public",
    ])
    assert private_access(source, "m.py") == [
        "m.py:2 import tensorflow.python.ops as ops",
        "m.py:3 from tensorflow import python",
        "m.py:4 model.optimizer._trainable_variables",
        "m.py:5 getattr(metric, '_direction', None)",
        "m.py:6 setattr(model, '_initial_epoch', 3)",
    ]
