"""The run's record on disk, under its 0.2 module name: `keras_best.json`
(`keras_best.storage.record`), its journal (`keras_best.storage.journal`) and
its history (`keras_best.storage.history`). Import from those modules in new code.
"""

from keras_best.storage.checks import ManifestError
from keras_best.storage.history import HISTORY_NAME
from keras_best.storage.history import append as append_history
from keras_best.storage.history import encode as encode_history
from keras_best.storage.journal import apply, remove_tmp_files, roll_forward
from keras_best.storage.record import MANIFEST_NAME, SCHEMA_VERSION, RunRecord, manifest_path, read

__all__ = ["HISTORY_NAME", "MANIFEST_NAME", "SCHEMA_VERSION", "ManifestError", "RunRecord", "append_history",
           "apply", "encode_history", "manifest_path", "read", "remove_tmp_files", "roll_forward"]
