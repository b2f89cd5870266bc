"""The tracker's `filepath`: its run directory and its file-name template.

`RunPath` checks a `filepath` once, at construction (placeholders, a
writable directory), and later turns an epoch's metrics into a file name.

>>> p = RunPath("runs/exp1/{epoch:03d}-{val_loss:.4f}.weights.h5")
>>> p.directory, p.format(2, None, {"val_loss": 0.25})
('runs/exp1', '003-0.2500.weights.h5')

With `save_format="orbax"`, a `filepath` without placeholders is the run
directory, as `keras.callbacks.OrbaxCheckpoint(directory)` takes one, and
keras-best names each save (an Orbax checkpoint directory) in it:

>>> p = RunPath("runs/exp1", "orbax")
>>> p.directory, p.format(2, None, {})
('runs/exp1', 'best-003')
"""

from __future__ import annotations

import os
import string
from typing import Any, Mapping

from keras_best.core import names
from keras_best.core.formats import ORBAX

RESERVED = ("epoch", "batch")  # placeholders the tracker fills itself
ORBAX_NAME = "best-{epoch:03d}"  # the saves' names in a plain Orbax run directory


class RunPath:
    """A parsed `filepath`: `directory` (the run directory), `template` (the
    file name, with placeholders) and `fields` (the placeholders' names).
    `save_format="orbax"` (given, not inferred from the name) makes a
    `filepath` without placeholders the run directory (see the module docstring)."""

    def __init__(self, filepath: Any, save_format: str | None = None) -> None:
        self.filepath = _to_string(filepath)
        if save_format == ORBAX and "{" not in self.filepath:
            self.filepath = names.join(self.filepath.rstrip("/") or "/", ORBAX_NAME)
        self.template = names.basename(self.filepath)
        head = self.filepath[: len(self.filepath.rstrip("/")) - len(self.template)]
        self.directory = head.rstrip("/") or ("/" if head else ".")
        if "{" in head or "}" in head:
            raise ValueError(
                "Placeholders are allowed in the file name only, not in its directory "
                f"(the run directory). Received: filepath={self.filepath}"
            )
        self.fields = _fields(self.template, self.filepath)
        # A trial name now, so that a template that can make no plain file name
        # fails at construction, not at the first save.
        self.format(0, 0, {f: 0.5 for f in self.metric_fields()})

    def metric_fields(self) -> list[str]:
        """Placeholders that name metrics (not `epoch` or `batch`)."""
        return [f for f in self.fields if f not in RESERVED]

    def format(self, epoch: int, step: int | None, values: Mapping[str, float], version: int = 0) -> str:
        """The file name for `epoch` (0-based; `{epoch}` counts from 1, as in Keras).

        `version` > 0 adds `-v{version}` before the extension (see `versioned`).
        The result is always a plain file name in the run directory, or a
        `ValueError` is raised.
        """
        fields = dict(values)
        fields["epoch"] = epoch + 1
        if step is not None:
            fields["batch"] = step + 1
        try:
            name = versioned(self.template.format(**fields), version)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"Failed to format filepath {self.filepath!r}: {e}") from e
        problem = names.name_problem(name)
        if problem is not None:
            raise ValueError(
                f"`filepath` made the file name {name!r}, which is not a plain file name in the run "
                f"directory: {problem}. Use placeholders that format to plain names, e.g. "
                f"'{{epoch:03d}}-{{val_loss:.4f}}.weights.h5'. Received: filepath={self.filepath}"
            )
        return name

    def shown(self, rel: str) -> str:
        """A run file's path as the user spelled the run directory (a bare file
        name stays bare, as Keras prints it)."""
        return rel if self.filepath == self.template else names.join(self.directory, rel)


EXTENSIONS = (".weights.h5", ".weights.json", ".keras", ".h5")


def versioned(name: str, version: int) -> str:
    """`name` with `-v{version}` before its extension (as Lightning's
    `enable_version_counter` does); `name` itself for version 0.

    >>> versioned("best-0.5.weights.h5", 1), versioned("export", 2)
    ('best-0.5-v1.weights.h5', 'export-v2')
    """
    if not version:
        return name
    for ext in EXTENSIONS:
        if name.endswith(ext) and len(name) > len(ext):
            return f"{name[: -len(ext)]}-v{version}{ext}"
    return f"{name}-v{version}"


def _to_string(filepath: Any) -> str:
    if isinstance(filepath, os.PathLike):
        filepath = os.fspath(filepath)
    if not isinstance(filepath, str) or not filepath:
        raise ValueError(f"`filepath` must be a non-empty path. Received: filepath={filepath!r}")
    return names.fspath(filepath)


def _fields(template: str, filepath: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"`filepath` is not a valid format string ({e}). Received: filepath={filepath}") from e
    fields = []
    for _, field, _, conversion in parsed:
        if field is None:
            continue
        if conversion not in (None, "r", "s", "a"):
            raise ValueError(
                f"`filepath` has an unknown conversion '!{conversion}' in {{{field}!{conversion}}}; "
                f"write e.g. '{{{field}:.4f}}'. Received: filepath={filepath}"
            )
        if not field or not field.replace("_", "a").replace("-", "a").isalnum():
            raise ValueError(
                "`filepath` placeholders must be metric names or `epoch`, e.g. "
                f"'{{epoch:03d}}-{{val_loss:.4f}}.weights.h5'. Received: filepath={filepath}"
            )
        fields.append(field)
    return fields
