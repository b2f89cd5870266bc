"""Partial restore: load the objects of a saved model that fit, or only some.

A weights file holds a model object by object (`keras_adapter.saved`): each
layer, the model itself, the optimizer... under a group named by its class and
place (`layers/dense_1`), as `model.load_weights` matches them. Here each
object of `model` is compared with its group in the file before anything is
assigned:

- an object *fits* when the file's group holds the same entries (`vars/0`,
  `vars/1`...) with the same shapes;
- `only=`: the objects chosen (layer names or objects, each with what it holds:
  a nested model's layers) are the only ones loaded;
- `skip_mismatch=True`: an object that does not fit keeps its values and is
  named in a warning, as Keras's `load_weights(..., skip_mismatch=True)` skips
  it (a whole layer, never half of one);
- otherwise one that does not fit is a `ValueError` naming the first
  differing variables (saved shape, model shape) and changes nothing.

Loading an object is its own `load_own_variables`, as `model.load_weights`
does. The files are read with plain h5py: one `.weights.h5`, the weights
member of a `.keras` archive, or the shards a `.weights.json` index names.

Example:
    >>> skipped = load_groups(model, saved, skip_mismatch=True)  # doctest: +SKIP
    >>> [m.describe() for m in skipped]  # doctest: +SKIP
    ['layers/dense_1/vars/0 (dense_1/kernel): saved (8, 3), model (8, 5)']
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import warnings
import zipfile
from typing import Any, Iterator, Mapping

from keras_best.keras_adapter.saved import SavedObject, load_own, saved_objects

Groups = Mapping[str, Mapping[str, Any]]  # group path -> {key: h5py dataset}
FIX = ("Pass `skip_mismatch=True` to load what fits (the rest keeps its values, with a warning naming "
       "it), or `only=[...]` (layer names or layers) to load some layers only.")


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A variable (or a whole object) of the model that differs from the file.

    Attributes:
        path: the object's group in the file ("" for the model itself).
        key: the entry (`"0"`...); `None` for an object the file does not hold.
        saved: the shape in the file (`None`: absent there).
        model: the shape in the model (`None`: absent there).
        name: the variable's path in the model, when it is a variable.
    """

    path: str
    key: str | None
    saved: tuple[int, ...] | None
    model: tuple[int, ...] | None
    name: str | None = None

    def describe(self) -> str:
        where = "/".join(p for p in (self.path, "vars", self.key) if p) if self.key is not None else (
            self.path or "the model")
        named = f" ({self.name})" if self.name else ""
        if self.key is None:
            return f"{where}: not in the file"
        saved = "absent" if self.saved is None else str(self.saved)
        model = "absent" if self.model is None else str(self.model)
        return f"{where}{named}: saved {saved}, model {model}"


def compare(obj: SavedObject, saved: Groups) -> list[Mismatch]:
    """How `obj` differs from its group in `saved` (`[]`: it fits)."""
    group = saved.get(obj.path)
    if group is None and obj.entries:
        return [Mismatch(obj.path, None, None, None)]
    group = group or {}
    out = []
    for key in list(obj.entries) + [k for k in group if k not in obj.entries]:
        mine = obj.entries.get(key)
        theirs = tuple(group[key].shape) if key in group else None
        if mine is None or mine.shape != theirs:
            out.append(Mismatch(obj.path, key, theirs, None if mine is None else mine.shape,
                                None if mine is None else mine.name))
    return out


def mismatches(model: Any, saved: Groups) -> list[Mismatch]:
    """Every difference between `model` and the file, in the file's order."""
    return [m for obj in saved_objects(model) for m in compare(obj, saved)]


def mismatch_error(found: list[Mismatch], what: str) -> ValueError:
    """The error for `found` (not empty): the first differing variables, and the fix."""
    shown = "; ".join(m.describe() for m in found[:3])
    more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
    return ValueError(f"Cannot load {what} into this model: its architecture (its weight shapes) differs "
                      f"from the saved one in {len(found)} variable(s): {shown}{more}. {FIX}")


def select(model: Any, objects: list[SavedObject], only: Any) -> list[SavedObject]:
    """The objects `only` chooses (each with the objects inside it): layer names or objects."""
    items = [only] if isinstance(only, str) or not isinstance(only, (list, tuple)) else list(only)
    if not items:
        raise ValueError(f"`only` must name at least one layer. Received: only={only!r}")
    prefixes = []
    for item in items:
        if isinstance(item, str):
            found = [o.path for o in objects if getattr(o.obj, "name", None) == item]
            if not found:
                names = [layer.name for layer in getattr(model, "layers", ())]
                close = difflib.get_close_matches(item, names, n=1)
                raise ValueError(f"No layer of the model is named {item!r} (in `only`). Its layers: {names}."
                                 f"{f' Did you mean {close[0]!r}?' if close else ''}")
        else:
            found = [o.path for o in objects if o.obj is item]
            if not found:
                raise ValueError(f"`only` takes layer names or layers of the model: {item!r} is not one of "
                                 "the objects the model saves.")
        prefixes += found
    return [o for o in objects if any(p == "" or o.path == p or o.path.startswith(p + "/") for p in prefixes)]


def load_groups(model: Any, saved: Groups, skip_mismatch: bool = False, only: Any = None,
                what: str = "the saved weights") -> list[Mismatch]:
    """Load into `model` the objects of `saved` chosen by `only` (all when
    `None`) that fit; returns what was skipped (`skip_mismatch`), else raises
    `mismatch_error` with nothing assigned."""
    objects = saved_objects(model)
    chosen = objects if only is None else select(model, objects, only)
    found = {id(o): compare(o, saved) for o in chosen}
    differ = [m for o in chosen for m in found[id(o)]]
    if differ and not skip_mismatch:
        raise mismatch_error(differ, what)
    for o in chosen:
        if not found[id(o)] and o.entries:
            load_own(o.obj, {k: d[()] for k, d in saved[o.path].items()})
    if differ:
        skipped = list(dict.fromkeys(m.path or "the model" for m in differ))
        warnings.warn(
            f"Skipped loading {len(skipped)} object(s) whose saved variables differ from the model's "
            f"(they keep their values): {', '.join(skipped)}. Differences: "
            f"{'; '.join(m.describe() for m in differ)}.",
            UserWarning, stacklevel=3)
    return differ


# ------------------------------------------------------------------ reading
def _vars_groups(files: list[Any]) -> dict[str, dict[str, Any]]:
    """`{object path: {key: dataset}}` of every `.../vars` group of open h5py files."""
    import h5py

    out: dict[str, dict[str, Any]] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "vars":
            group = out.setdefault(name[: -len("vars")].rstrip("/"), {})
            group.update({k: v for k, v in obj.items() if isinstance(v, h5py.Dataset)})

    for f in files:
        f.visititems(visit)  # the model's own group is "vars", at the root
    return out


@contextlib.contextmanager
def h5_groups(local: str) -> Iterator[Groups]:
    """The groups of the `.weights.h5` file, or of the sharded set whose index is, at the local path."""
    import h5py

    names = [local]
    if local.endswith(".json"):
        with open(local, encoding="utf-8") as f:
            listed = json.load(f)["weight_map"].values()
        shards = sorted({s for v in listed for s in (v if isinstance(v, list) else [v])})
        names = [os.path.join(os.path.dirname(local), os.path.basename(s)) for s in shards]
    with contextlib.ExitStack() as stack:
        yield _vars_groups([stack.enter_context(h5py.File(n, "r")) for n in names])


@contextlib.contextmanager
def archive_groups(local: str, member: str) -> Iterator[Groups]:
    """The groups of the weights `member` of the `.keras` archive at the local path."""
    import h5py

    with zipfile.ZipFile(local) as archive, archive.open(member) as raw, h5py.File(raw, "r") as f:
        yield _vars_groups([f])
