"""`.keras` archives, written from a host snapshot in any thread.

`model.save("m.keras")` writes a zip file (stored, not compressed) holding
`metadata.json`, `config.json` and `model.weights.h5`, whose groups and
datasets are the ones `model.save_weights` writes (optimizer included), plus
`assets/...` for objects that save assets (a `StringLookup`'s vocabulary).
All of it comes from the live model, in the caller's thread. Here the
training thread takes only what needs the live model: the two JSON documents
(`h5_layout.model_json`) and one host copy of each saved variable (the
snapshot of `.weights.h5` files, see `weights_h5`); `ArchiveSnapshot.write` builds
the archive from them alone, so it may run in the background writer.

The weights member is written in place: h5py writes it straight into the zip
file after its local header (no copy in memory, as for `.weights.h5` files),
then zipfile is handed the same bytes back, read from the page cache, to
compute their CRC and sizes and write its headers.

A model that cannot be captured this way (an object that saves assets or has
an unknown `save_own_variables`, a config that does not serialize, any other
capture error) is saved with `model.save` in the training thread, with one
warning saying why; so do, silently, a model class that overrides `save`
and legacy `.h5` full-model files.

Example:
    >>> snapshot = KerasEngine().snapshot(model)  # doctest: +SKIP
    >>> snapshot.write("best.keras")  # in any thread  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
import zipfile
from typing import Any, Callable, ContextManager

from keras_best.core.formats import KERAS
from keras_best.engines import partial
from keras_best.engines.base import Engine, LiveSnapshot, Snapshot
from keras_best.engines.weights_h5 import OnWeights, WeightsSnapshot, WeightsWriter
from keras_best.keras_adapter import h5_layout
from keras_best.storage import files
from keras_best.storage.buffers import HostBuffers

CHUNK_BYTES = 8 << 20  # read back per zipfile call (CRC)
H5_OVERHEAD_BYTES = 16 << 20  # more than HDF5's headers for any model (zip64 margin)


class ArchiveSnapshot(OnWeights):
    """A model's `.keras` archive as host data: config and metadata JSON, and
    the weights snapshot of its `model.weights.h5` member."""

    def __init__(self, config_json: str, metadata_json: str, weights: WeightsSnapshot) -> None:
        super().__init__(weights)
        self.config_json, self.metadata_json = config_json, metadata_json
        self.extra_bytes = len(config_json) + len(metadata_json)

    def write(self, path: str) -> None:
        """Write the archive at local `path` (a new file), fsynced."""
        metadata, config, weights = h5_layout.archive_names()
        try:
            write_archive(path, [(metadata, self.metadata_json.encode()), (config, self.config_json.encode())],
                          weights, self.weights.fill, self.weights.nbytes)
        finally:
            self.weights.release()


class ArchiveWriter:
    """Snapshots of one model as `.keras` archives, its layout captured once;
    `None` when it must be saved with `model.save` (warned once)."""

    def __init__(self, buffers: HostBuffers | None = None) -> None:
        self._weights = WeightsWriter(refuse_assets=True, fallback="model.save", buffers=buffers)
        self._failed_for: int | None = None

    def snapshot(self, model: Any, stream: bool = False) -> ArchiveSnapshot | None:
        if self._failed_for == id(model):
            return None
        weights = self._weights.snapshot(model, stream)
        if weights is None:
            self._failed_for = id(model)
            return None
        try:
            config_json, metadata_json = h5_layout.model_json(model)
        except Exception as e:  # noqa: BLE001 - model.save, in the training thread, says it its own way
            self._failed_for = id(model)
            self._weights.refuse(model, RuntimeError(f"its config could not be serialized: {e!r}"))
            return None
        return ArchiveSnapshot(config_json, metadata_json, weights)


def _save(model: Any, path: str) -> None:
    model.save(path)


class KerasEngine(Engine):
    """`.keras` archives, written from host copies (see `ArchiveWriter`);
    legacy `.h5` full-model files (`legacy_h5=True`) with `model.save`."""

    format = KERAS

    def __init__(self, legacy_h5: bool = False, buffers: HostBuffers | None = None) -> None:
        self._legacy_h5 = legacy_h5
        self._archive = ArchiveWriter(buffers)

    def snapshot(self, model: Any, stream: bool = False) -> Snapshot:
        import keras

        if self._legacy_h5 or type(model).save is not keras.Model.save:
            return LiveSnapshot(model, _save)  # legacy format, or the model's own save
        snap = self._archive.snapshot(model, stream)
        return LiveSnapshot(model, _save) if snap is None else snap

    def saved_groups(self, local: str) -> ContextManager[partial.Groups]:
        """The groups of the archive's weights member (not of legacy `.h5` models)."""
        if self._legacy_h5:
            raise ValueError("Partial restore (`skip_mismatch=`, `only=`) reads `.weights.h5`, `.weights.json` and "
                             f"`.keras` files; {local} is a legacy `.h5` model. Load it whole, or save `.keras`.")
        return partial.archive_groups(local, h5_layout.archive_names()[2])


def write_archive(path: str, members: list[tuple[str, bytes]], h5_name: str, fill: Callable[[Any], None],
                  nbytes: int) -> None:
    """Write a zip file at the local `path` (new, never through a symlink)
    as `model.save` does: `members` then `h5_name`, an HDF5 file built by
    `fill(h5py_file)` holding about `nbytes` of data (`files.write_durably`
    fsyncs it).

    Member attributes follow Keras's: JSON members through `ZipFile.open`
    (no date), the weights as `writestr` stores them (the time of writing).
    As with `files.write_h5`, a write error never reaches HDF5: it is raised
    once the file is complete.
    """
    fd = files.create_new_file(path)
    try:
        out = files.ErrorProofFile(fd)
        with zipfile.ZipFile(out, "w") as zf:  # ZIP_STORED, as Keras
            for name, data in members:
                with zf.open(name, "w") as f:
                    f.write(data)
            info = zipfile.ZipInfo(h5_name, date_time=time.localtime(time.time())[:6])
            zip64 = (nbytes + H5_OVERHEAD_BYTES) * 1.05 > zipfile.ZIP64_LIMIT
            with zf.open(info, "w", force_zip64=zip64) as member:
                start = out.tell()
                h5 = files.ErrorProofFile(fd, base=start)
                files.fill_h5(h5, fill)
                out.skip_writes = True  # the bytes are in place: zipfile only reads them
                try:
                    for offset in range(start, start + h5.end, CHUNK_BYTES):
                        member.write(os.pread(fd, min(CHUNK_BYTES, start + h5.end - offset), offset))
                finally:
                    out.skip_writes = False
        if out.error is not None:
            raise out.error
    finally:
        os.close(fd)
