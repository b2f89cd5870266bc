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


def main(directory: str, max_trials: int, keep_top_k: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras_tuner
    from sklearn.datasets import load_digits

    from keras_best import manifest
    from keras_best.keras_tuner import CHECKPOINT_NAME, SearchBest

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")

    def build(hp):
        model = keras.Sequential([keras.Input((64,)),
                                  keras.layers.Dense(hp.Int("units", 4, 32, step=4), activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(keras.optimizers.Adam(hp.Float("lr", 1e-3, 3e-2, sampling="log")),
                      "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    class Checked(keras_tuner.RandomSearch):  # a user's own run_trial, calling the stock one
        def run_trial(self, trial, *args, **kwargs):
            result = super().run_trial(trial, *args, **kwargs)
            trial_dir = self.get_trial_dir(trial.trial_id)
            for name in (manifest.MANIFEST_NAME, CHECKPOINT_NAME):
                if not os.path.exists(os.path.join(trial_dir, name)):
                    print(f"VIOLATION trial {trial.trial_id} lost {name} while it ran", flush=True)
            print(f"RAN {trial.trial_id}", flush=True)
            return result

    tuner = Checked(build, objective="val_accuracy", max_trials=max_trials, seed=3,
                    directory=directory, project_name="search")
    SearchBest(keep_top_k=keep_top_k).wrap(tuner)
    tuner.search(x[:1200], y[:1200], validation_data=(x[1200:], y[1200:]), epochs=2, verbose=0)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
