"""What a failed save raises, and says: the previous best is intact."""

from __future__ import annotations

from typing import Any

from keras_best.storage import files


class SaveError(OSError):
    """A save failed; the previous best and the record are intact."""


def save_error_message(directory: str, best: Any, monitor: str, epoch: int, error: OSError) -> str:
    """The message of a `SaveError` at `epoch` (0-based; said from 1), naming the
    previous `best` record (or `None`) that stays recorded.

    >>> save_error_message(".", None, "val_loss", 2, OSError(28, "No space left on device"))[:60]
    "Epoch 3: could not save: writing into '.' failed: [Errno 28]"
    """
    if not files.isdir(directory):
        return (f"Epoch {epoch + 1}: could not save: the run directory {directory!r} no longer "
                "exists (was it removed?). The files saved there went with it: no best of this run "
                "is on disk any more. Create the directory again to carry on (the next update() "
                "starts a new record there, keeping the history), or restore it from a copy.")
    where = f"writing into {directory!r} failed: {error}"
    kept = (f"The previous best (epoch {best.epoch + 1}, {monitor}={best.value:.5f}, "
            f"{best.path}) is intact and still recorded." if best else "Nothing was saved before.")
    return (f"Epoch {epoch + 1}: could not save: {where}. {kept} Free disk space or fix "
            "the directory, then call update() again or resume with resume=True.")
