"""The run's record on disk as the layers above storage use it, in one import:
`keras_best.json` (`record`: `RunRecord`, `read`), its journal (`journal`:
`roll_forward`, `remove_tmp_files`) and its history (`history`)."""

from keras_best.storage.checks import ManifestError
from keras_best.storage.history import HISTORY_NAME
from keras_best.storage.history import append as append_history
from keras_best.storage.history import encode as encode_history
from keras_best.storage.journal import apply, remove_tmp_files, roll_forward
from keras_best.storage.record import MANIFEST_NAME, SCHEMA_VERSION, RunRecord, manifest_path, read

__all__ = ["HISTORY_NAME", "MANIFEST_NAME", "SCHEMA_VERSION", "ManifestError", "RunRecord", "append_history",
           "apply", "encode_history", "manifest_path", "read", "remove_tmp_files", "roll_forward"]
