"""Hit a real write error after a first good save; report what happened as JSON.

Usage: python write_error_worker.py {fsize|fsize-carry-on|chmod} RUN_DIR [async]
  fsize: RLIMIT_FSIZE below the model size (a full disk, as seen by write()).
  fsize-carry-on: the same, then the limit is lifted (disk space freed) and
    training carries on: two more updates, finish() and a normal exit.
  chmod: the run directory made read-only (run as a non-root user).
"""

import json
import os
import resource
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_best import BestWeightsTracker  # noqa: E402


def main(kind: str, run_dir: str, how: str = "sync") -> None:
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512), keras.layers.Dense(1)])
    options = {"async_save": True} if how == "async" else {}
    tracker = BestWeightsTracker(model, os.path.join(run_dir, "best.weights.h5"), verbose=0, **options)
    model.set_weights([np.full(w.shape, 0.0, w.dtype) for w in model.weights])
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()  # the first best is on disk
    if kind.startswith("fsize"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    else:
        os.chmod(run_dir, 0o555)
    model.set_weights([np.full(w.shape, 1.0, w.dtype) for w in model.weights])
    result = {"raised": None, "message": "", "best_after": None}
    try:
        tracker.update(1, {"val_loss": 0.5})
        tracker.finish()  # with background writes the error may surface here
    except Exception as e:  # noqa: BLE001 - report it to the test
        result["raised"] = type(e).__name__
        result["message"] = str(e)
        result["cause"] = type(e.__cause__).__name__ if e.__cause__ else None
    result["best_after"] = tracker.best
    if kind == "fsize-carry-on":
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        model.set_weights([np.full(w.shape, 2.0, w.dtype) for w in model.weights])
        tracker.update(1, {"val_loss": 0.5})  # the failed epoch again: it was never recorded
        model.set_weights([np.full(w.shape, 3.0, w.dtype) for w in model.weights])
        tracker.update(2, {"val_loss": 0.4})
        tracker.finish()
        result["carried_on"] = [tracker.best_epoch, tracker.best]
    if kind == "chmod":
        os.chmod(run_dir, 0o755)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
