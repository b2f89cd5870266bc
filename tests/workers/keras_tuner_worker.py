"""A process of a distributed KerasTuner search (the chief oracle or a worker).

The role comes from KerasTuner's own environment (`KERASTUNER_TUNER_ID`:
"chief" serves the oracle over gRPC, any other id runs trials;
`KERASTUNER_ORACLE_IP`, `KERASTUNER_ORACLE_PORT`). Every process builds the same
`RandomSearch` wrapped by `SearchBest`. A worker checks, after each of its
trials has trained, that the trial's files are still there (no other worker
deleted them while it ran), printing `VIOLATION ...` if not, and `DONE` at the end.

Usage: python keras_tuner_worker.py DIRECTORY MAX_TRIALS KEEP_TOP_K
"""

from __future__ import annotations

import os
import sys
import time

EPOCHS = 3


def main(directory: str, max_trials: int, keep_top_k: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_tuner
    from sklearn.datasets import load_digits

    from keras_best.integrations.keras_tuner import CHECKPOINT_NAME, SearchBest
    from keras_best.storage import manifest

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")

    def build(hp):
        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(hp.Int("units", 4, 32, step=4), activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(keras.optimizers.Adam(hp.Float("lr", 1e-3, 3e-2, sampling="log")),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    class Slow(keras.callbacks.Callback):  # trials of the two workers overlap for sure
        def on_epoch_begin(self, epoch, logs=None):
            time.sleep(0.3)

    class Checked(keras_tuner.RandomSearch):  # a user's own run_trial, calling the stock one
        def run_trial(self, trial, *args, **kwargs):
            result = super().run_trial(trial, *args, **kwargs)
            time.sleep(1.0)  # the trial still runs: the other worker's cleanups must leave it alone
            trial_dir = self.get_trial_dir(trial.trial_id)
            for name in (manifest.MANIFEST_NAME, CHECKPOINT_NAME):
                if not os.path.exists(os.path.join(trial_dir, name)):
                    print(f"VIOLATION trial {trial.trial_id} lost {name} while it ran", flush=True)
            with open(os.path.join(trial_dir, manifest.HISTORY_NAME)) as f:
                if len(f.read().splitlines()) != EPOCHS:
                    print(f"VIOLATION trial {trial.trial_id} lost epochs of its history", flush=True)
            print(f"RAN {trial.trial_id}", flush=True)
            return result

    tuner = Checked(build, objective="val_accuracy", max_trials=max_trials, seed=3,
                    directory=directory, project_name="search")
    SearchBest(keep_top_k=keep_top_k).wrap(tuner)
    tuner.search(x[:1200], y[:1200], validation_data=(x[1200:], y[1200:]), epochs=EPOCHS, verbose=0,
                 callbacks=[Slow()])
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
