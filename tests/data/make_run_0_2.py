"""Make the keras-best 0.2 run directories in tests/data/run_0_2/ (run once, with 0.2).

    git worktree add /tmp/kb02 6c6c1e7
    PYTHONPATH=/tmp/kb02 KERAS_BACKEND=tensorflow python tests/data/make_run_0_2.py

Two runs, each stopped after epoch 4 of a planned 8 (no `finish()`: as if the job
ended) so that `resume=True` continues them:
- `weights/`: "{epoch:03d}-{val_loss:.4f}.weights.h5", keep_top_k=2, save_last=True,
  archive_every=3, patience=5, with an optimizer (training state keras_best_last.h5);
- `keras/`: "best.keras", keep_top_k=1.
`expected.json` holds the seed, the best epoch and value of each run; `best_<run>.npz`
the weights of each run's best epoch.
"""

import json
import os
import shutil
import sys

import keras
import numpy as np

SEED = 23
VALUES = [0.9, 0.5, 0.7, 0.6]  # scripted val_loss: the best (epoch 1) is not the last


def make_model():
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def data():
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(32, 3)).astype("float32")
    return x, (x @ np.array([1.0, -2.0, 0.5], "float32"))[:, None]


def main(out):
    from keras_best import BestWeightsTracker

    x, y = data()
    runs = {"weights": ("{epoch:03d}-{val_loss:.4f}.weights.h5",
                        dict(keep_top_k=2, save_last=True, archive_every=3, patience=5)),
            "keras": ("best.keras", dict(keep_top_k=1))}
    expected = {"seed": SEED, "values": VALUES, "runs": {}}
    for name, (template, options) in runs.items():
        directory = os.path.join(out, name)
        shutil.rmtree(directory, ignore_errors=True)
        model = make_model()
        tracker = BestWeightsTracker(model, os.path.join(directory, template), monitor="val_loss", mode="min",
                                     optimizer=model.optimizer, resume=True, verbose=0, **options)
        best = None
        for epoch, value in enumerate(VALUES):
            model.fit(x, y, epochs=1, batch_size=8, verbose=0)
            decision = tracker.update(epoch, {"val_loss": value})
            if decision.improved:
                best = [w.copy() for w in model.get_weights()]
        tracker._run.writer.flush()  # a finished write, no finish(): the job ended here
        np.savez(os.path.join(out, f"best_{name}.npz"), *best)
        expected["runs"][name] = {"best_epoch": tracker.best_epoch, "best": tracker.best,
                                  "best_path": os.path.basename(tracker.best_path), "epochs_done": len(VALUES)}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_0_2"))
