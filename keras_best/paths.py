"""The tracker's `filepath`: its run directory and its file-name template.

`RunPath` checks a `filepath` once, at construction (placeholders, a
writable directory), and later turns an epoch's metrics into a file name.

>>> p = RunPath("runs/exp1/{epoch:03d}-{val_loss:.4f}.weights.h5")
>>> p.directory, p.format(2, None, {"val_loss": 0.25})
('runs/exp1', '003-0.2500.weights.h5')
"""

from __future__ import annotations

import os
import string
from typing import Any, Mapping

from keras_best import files

RESERVED = ("epoch", "batch")  # placeholders the tracker fills itself


class RunPath:
    """A parsed `filepath`: `directory` (the run directory), `template` (the
    file name, with placeholders) and `fields` (the placeholders' names)."""

    def __init__(self, filepath: Any) -> None:
        self.filepath = _to_string(filepath)
        self.template = files.basename(self.filepath)
        head = self.filepath[: len(self.filepath.rstrip("/")) - len(self.template)]
        self.directory = head.rstrip("/") or ("/" if head else ".")
        if "{" in head or "}" in head:
            raise ValueError(
                "Placeholders are allowed in the file name only, not in its directory "
                f"(the run directory). Received: filepath={self.filepath}"
            )
        self.fields = _fields(self.template, self.filepath)

    def metric_fields(self) -> list[str]:
        """Placeholders that name metrics (not `epoch` or `batch`)."""
        return [f for f in self.fields if f not in RESERVED]

    def format(self, epoch: int, step: int | None, values: Mapping[str, float]) -> str:
        """The file name for `epoch` (0-based; `{epoch}` counts from 1, as in Keras)."""
        fields = dict(values)
        fields["epoch"] = epoch + 1
        if step is not None:
            fields["batch"] = step + 1
        try:
            return self.template.format(**fields)
        except (KeyError, ValueError) as e:
            raise ValueError(f"Failed to format filepath {self.filepath!r}: {e}") from e

    def shown(self, rel: str) -> str:
        """A run file's path as the user spelled the run directory (a bare file
        name stays bare, as Keras prints it)."""
        return rel if self.filepath == self.template else files.join(self.directory, rel)


def prepare_directory(directory: str) -> None:
    """Create the run directory and check that it is writable, or raise `ValueError`."""
    try:
        files.makedirs(directory)
    except OSError as e:
        raise ValueError(
            f"Cannot create the run directory {directory!r}: {e.strerror or e}. "
            "Choose a writable location for `filepath`."
        ) from e
    if files.is_remote(directory):
        return
    probe = files.join(directory, files.tmp_path("probe"))
    try:
        with open(probe, "wb"):
            pass
        files.remove(probe)
    except OSError as e:
        raise ValueError(
            f"The run directory {directory!r} is not writable: {e.strerror or e}. "
            "Choose a writable location for `filepath`."
        ) from e


def _to_string(filepath: Any) -> str:
    if isinstance(filepath, os.PathLike):
        return os.fspath(filepath)
    if not isinstance(filepath, str) or not filepath:
        raise ValueError(f"`filepath` must be a non-empty path. Received: filepath={filepath!r}")
    return filepath


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
