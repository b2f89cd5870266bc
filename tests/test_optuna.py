"""`keras_best.integrations.optuna.StudyBest`: real Optuna studies, real Keras models and files."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import keras
import numpy as np
import optuna
import pytest

from keras_best import load_best
from keras_best.integrations.optuna import USER_ATTR_PATH, StudyBest
from tests.conftest import make_model, perturb
from tests.workers import optuna_worker
from tests.workers.optuna_worker import SCHEDULE, ScheduleSampler, build, data, make_objective, val_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "optuna_worker.py")
POSTGRES_DSN = os.environ.get("KERAS_BEST_TEST_POSTGRES", "postgresql://kb:kb@127.0.0.1:5432/kb_test")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def pruned_study(**kwargs) -> optuna.Study:
    """Trial n gets learning rate SCHEDULE[n]; the hopeless ones get pruned."""
    return optuna.create_study(
        sampler=ScheduleSampler(),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        **kwargs,
    )


def trial_dirs(directory: str) -> set[int]:
    return {int(n.split("-")[1]) for n in os.listdir(directory) if n.startswith("trial-")}


def top(study: optuna.Study, k: int) -> set[int]:
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return {t.number for t in sorted(done, key=lambda t: t.value, reverse=reverse)[:k]}


def check_study_files(study: optuna.Study, directory: str, k: int) -> None:
    """The kept directories are exactly the top k trials; the pruned left nothing."""
    states = {t.number: t.state for t in study.trials}
    pruned = {n for n, s in states.items() if s == optuna.trial.TrialState.PRUNED}
    assert pruned, "the schedule is meant to get some trials pruned"
    assert trial_dirs(directory) == top(study, k)
    assert not pruned & trial_dirs(directory)
    assert not [n for n in os.listdir(directory) if n.startswith(".kb-trash-")]
    for number in top(study, k):
        attrs = study.trials[number].user_attrs
        path = os.path.join(directory, attrs[USER_ATTR_PATH])
        assert os.path.isfile(path)
        stock = build()
        stock.load_weights(path)  # a plain Keras weights file
        assert val_loss(stock, *data()[2:]) == pytest.approx(study.trials[number].value, rel=1e-6)


def check_load_best(study: optuna.Study, best: StudyBest) -> None:
    model = build()
    model.set_weights([np.random.default_rng(1).normal(size=w.shape) for w in model.get_weights()])
    record = best.load_best(study, model)
    assert record.trial_number == study.best_trial.number
    assert record.value == study.best_value
    assert record.params == study.best_params
    assert record.path == best.best_path(study)
    assert val_loss(model, *data()[2:]) == pytest.approx(study.best_value, rel=1e-6)


# ----------------------------------------------------------------- one process
def test_single_process_keeps_top_k_and_prunes(tmp_path):
    study = pruned_study()
    best = StudyBest(tmp_path / "study", keep_top_k=2)
    best.optimize(study, make_objective(best), n_trials=len(SCHEDULE))
    check_study_files(study, best.directory, 2)
    bad = {t.number for t in study.trials if t.params["lr"] < 1e-5}
    assert all(study.trials[n].state == optuna.trial.TrialState.PRUNED for n in bad)
    check_load_best(study, best)
    assert best.cleanup(study) == []  # idempotent


def test_threads_share_one_study(tmp_path):
    """`study.optimize(n_jobs=2)`: trials in two threads of one process."""
    study = optuna.create_study(sampler=ScheduleSampler())
    best = StudyBest(tmp_path / "study", keep_top_k=2)
    best.optimize(study, make_objective(best), n_trials=6, n_jobs=2)
    assert trial_dirs(best.directory) == top(study, 2)
    check_load_best(study, best)


@pytest.mark.slow
def test_fit_callback_maximize(tmp_path):
    """`callback()` in `fit()`, a study that maximizes, `mode` from the study's direction."""
    x, y, vx, vy = data()
    best = StudyBest(tmp_path / "study", keep_top_k=1)

    def objective(trial):
        model = build()
        model.compile(keras.optimizers.SGD(trial.suggest_float("lr", 1e-6, 0.5, log=True)), "mse",
                      metrics=[keras.metrics.R2Score(name="r2")])
        callback = best.callback(trial, monitor="val_r2")  # "r2" cannot be inferred: the study says max
        model.fit(x, y, validation_data=(vx, vy), batch_size=64, epochs=4, verbose=0, callbacks=[callback])
        return callback.best

    study = optuna.create_study(direction="maximize")
    for lr in (0.05, 0.3, 0.1):
        study.enqueue_trial({"lr": lr})
    best.optimize(study, objective, n_trials=3)
    assert study.best_params == {"lr": 0.3}
    assert trial_dirs(best.directory) == {study.best_trial.number}
    model = build()
    model.compile("sgd", "mse", metrics=[keras.metrics.R2Score(name="r2")])
    record = best.load_best(study, model)
    assert record.monitor == "val_r2"
    r2 = model.evaluate(vx, vy, batch_size=64, verbose=0, return_dict=True)["r2"]
    assert r2 == pytest.approx(study.best_value, rel=1e-6)


def test_running_trial_is_never_deleted(tmp_path):
    """A trial that finished training but is not COMPLETE in the storage keeps its files."""
    study = optuna.create_study()
    best = StudyBest(tmp_path / "study", keep_top_k=1)

    def run(trial, values):
        model = make_model()
        tracker = best.tracker(trial, model, verbose=0)
        for epoch, v in enumerate(values):
            tracker.update(epoch, {"val_loss": v})
        tracker.finish()
        return tracker.best

    slow = study.ask()
    slow_value = run(slow, [0.9, 0.8])  # trained, not told yet: still RUNNING
    fast = study.ask()
    study.tell(fast, run(fast, [0.5, 0.4]))
    assert best.cleanup(study) == []
    assert trial_dirs(best.directory) == {slow.number, fast.number}
    study.tell(slow, slow_value)  # COMPLETE now, and worse than `fast`
    assert best.cleanup(study) == [best.trial_directory(slow)]
    assert trial_dirs(best.directory) == {fast.number}
    assert best.best_path(study) == os.path.join(best.trial_directory(fast), "best.weights.h5")
    assert study.trials[fast.number].user_attrs == {
        "keras_best_path": os.path.join(f"trial-{fast.number:05d}", "best.weights.h5"),
        "keras_best_epoch": 1,
        "keras_best_value": 0.4,
    }


def test_failed_trial_leaves_nothing(tmp_path):
    best = StudyBest(tmp_path / "study")

    def objective(trial):
        tracker = best.tracker(trial, make_model(), verbose=0)
        tracker.update(0, {"val_loss": 1.0 / (trial.number + 1)})
        if trial.number == 1:
            raise RuntimeError("boom")
        tracker.finish()
        return tracker.best

    study = optuna.create_study()
    with pytest.raises(RuntimeError, match="boom"):
        best.optimize(study, objective, n_trials=3)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trial_dirs(best.directory) == {0}
    best.optimize(study, objective, n_trials=1, catch=(RuntimeError,))  # trial 2 beats trial 0
    assert trial_dirs(best.directory) == {2}


def test_ties_load_a_kept_trial_with_the_best_value(tmp_path):
    best = StudyBest(tmp_path / "study", keep_top_k=1)
    model = make_model()

    def objective(trial):
        tracker = best.tracker(trial, model, verbose=0)
        tracker.update(0, {"val_loss": 0.5})
        tracker.finish()
        return tracker.best

    study = optuna.create_study()
    best.optimize(study, objective, n_trials=3)
    assert trial_dirs(best.directory) == {0}  # equal values: the earliest trial, in every process
    record = best.load_best(study, make_model())
    assert (record.trial_number, record.value) == (0, 0.5)


def test_wrong_returned_value_warns(tmp_path):
    best = StudyBest(tmp_path / "study")

    def objective(trial):
        tracker = best.tracker(trial, make_model(), verbose=0)
        tracker.update(0, {"val_loss": 0.3})
        tracker.update(1, {"val_loss": 0.7})
        tracker.finish()
        return 0.7  # the last epoch, not the saved best

    study = optuna.create_study()
    with pytest.warns(UserWarning, match=r"returned 0.7, but its saved best val_loss is 0.3"):
        best.optimize(study, objective, n_trials=1)
    with pytest.warns(UserWarning, match=r"Return `tracker.best`"):
        best.load_best(study, make_model())


# -------------------------------------------------------------------- errors
def test_multi_objective_is_refused(tmp_path):
    best = StudyBest(tmp_path / "study")
    study = optuna.create_study(directions=["minimize", "maximize"])
    with pytest.raises(ValueError, match="single-objective study.*2 objectives"):
        best.tracker(study.ask(), make_model())
    with pytest.raises(ValueError, match="single-objective study"):
        best.load_best(study, make_model())


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"keep_top_k": 3}, ValueError, "single best file"),
        ({"filepath": "x.weights.h5"}, ValueError, "chooses `filepath` itself"),
        ({"resume": True}, ValueError, "chooses `resume` itself"),
        ({"monitor": "val_accuracy"}, ValueError, "minimizes its objective.*highest 'val_accuracy'"),
        ({"mode": "max"}, ValueError, r"pass mode='min'"),
        ({"mode": "best"}, ValueError, "`mode` must be one of"),
        ({"filename": "sub/best.weights.h5"}, ValueError, "without folders"),
    ],
)
def test_bad_tracker_options(tmp_path, options, error, match):
    best = StudyBest(tmp_path / "study")
    with pytest.raises(error, match=match):
        best.tracker(optuna.create_study().ask(), make_model(), **options)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="keep_top_k` must be an int >= 1"):
        StudyBest(tmp_path, keep_top_k=0)
    with pytest.raises(ValueError, match="conditional writes, which keras-best does on s3://"):
        StudyBest("gs://bucket/study")
    best = StudyBest(tmp_path / "study")
    with pytest.raises(TypeError, match="needs the `optuna.Trial`.*FixedTrial"):
        best.tracker(optuna.trial.FixedTrial({"lr": 0.1}), make_model())
    with pytest.raises(TypeError, match="Expected an `optuna.Study`"):
        best.cleanup("study")
    with pytest.raises(ValueError, match="no completed trial yet"):
        best.best_path(optuna.create_study())


def test_one_directory_per_study(tmp_path):
    best = StudyBest(tmp_path / "study")
    best.cleanup(optuna.create_study(study_name="first"))
    with pytest.raises(ValueError, match="holds the models of study 'first', not 'second'"):
        best.tracker(optuna.create_study(study_name="second").ask(), make_model())


def test_best_trial_without_files(tmp_path):
    best = StudyBest(tmp_path / "study")
    study = optuna.create_study()
    study.optimize(lambda trial: 1.0, n_trials=1)  # did not save through StudyBest
    with pytest.raises(FileNotFoundError, match="trial 0, value 1.0.*has no saved model"):
        best.load_best(study, make_model())


def test_trial_directory_is_a_run(tmp_path):
    """Each trial directory is an ordinary keras-best run: `keras_best.load_best` reads it."""
    best = StudyBest(tmp_path / "study")
    study = optuna.create_study()
    trial = study.ask()
    tracker = best.tracker(trial, make_model(), verbose=0)
    tracker.update(0, {"val_loss": 0.25})
    tracker.finish()
    study.tell(trial, tracker.best)
    assert load_best(make_model(), best.trial_directory(trial)).value == 0.25


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_inspect_a_study_directory_shows_its_kept_trials_best_first(tmp_path, direction):
    import json

    from tests.test_cli import keras_best_process

    finals = [0.5, 0.2, 0.9, 0.3, 0.1]  # each trial's best value, reached at its 2nd epoch
    monitor = "val_loss" if direction == "minimize" else "val_acc"
    study = optuna.create_study(study_name="s1", direction=direction, pruner=optuna.pruners.NopPruner())
    best = StudyBest(tmp_path / "study", keep_top_k=3)

    def objective(trial):
        model = make_model()
        tracker = best.tracker(trial, model, monitor=monitor, verbose=0)
        v = finals[trial.number]
        worse = 0.2 if direction == "minimize" else -0.2
        for epoch, value in enumerate([v + worse, v, v + worse / 2]):
            perturb(model, epoch)
            tracker.update(epoch, {monitor: value})
        tracker.finish()
        return tracker.best

    best.optimize(study, objective, n_trials=len(finals))
    kept = sorted(top(study, 3), key=lambda n: study.trials[n].value, reverse=direction == "maximize")
    assert kept[0] == study.best_trial.number
    done = keras_best_process("inspect", best.directory)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"Optuna study 's1' in {best.directory} (keras_best_study.json): 3 kept trials"
    better = "lower" if direction == "minimize" else "higher"
    assert lines[1] == f"3 runs, best first by {monitor} ({better} is better):"
    rows = [line.split() for line in lines[3:6]]
    assert [r[:5] for r in rows] == [
        [str(i), f"trial-{n:05d}", f"{finals[n]:.4f}", "2", "3"] for i, n in enumerate(kept, start=1)]
    assert lines[-1] == f"One trial in full: keras-best inspect {best.trial_directory(study.best_trial)}"
    data = json.loads(keras_best_process("inspect", best.directory, "--json").stdout)
    assert data["study"] == "s1" and data["ranked_by"] == monitor
    assert [r["directory"] for r in data["runs"]] == [best.trial_directory(n) for n in kept]
    assert [r["best"]["epoch"] for r in data["runs"]] == [1, 1, 1]
    # Where one run is needed, the error names the best trial, not the first by name.
    done = keras_best_process("plot", best.directory, "-o", tmp_path / "x.png")
    assert done.returncode == 1
    assert (f"its best kept trial is {best.trial_directory(study.best_trial)!r} ({monitor} "
            f"{study.best_value:.4f} at epoch 2): pass that") in done.stderr
    # compare takes the study directory as its trials.
    out = keras_best_process("compare", best.directory).stdout
    assert [line.split()[1] for line in out.splitlines()[2:5]] == [best.trial_directory(n) for n in kept]


# --------------------------------------------------------- shared storages
def run_workers(url: str, study_name: str, directory: str, n_workers: int, trials_each: int, k: int) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, url, study_name, directory, str(trials_each), str(k)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        for _ in range(n_workers)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"worker failed:\n{out}\n{err[-3000:]}"
        assert f"DONE {trials_each}" in out
        assert "VIOLATION" not in out, out


def shared_study(url: str, name: str) -> optuna.Study:
    return optuna.create_study(study_name=name, storage=optuna_worker.storage_for(url))


@pytest.mark.slow
def test_three_processes_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    shared_study(url, "shared")
    directory = str(tmp_path / "models")
    run_workers(url, "shared", directory, n_workers=3, trials_each=4, k=2)
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.trials) == 12
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    check_study_files(study, directory, 2)
    best = StudyBest(directory, keep_top_k=2)
    check_load_best(study, best)
    assert best.cleanup(study) == []


def postgres_or_skip() -> str:
    """The SQLAlchemy URL of the test server (driver psycopg 3), or skip saying why."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        pytest.skip(
            f"No PostgreSQL at {POSTGRES_DSN} ({str(e).strip()}); start it with `bash .ci/services.sh` "
            "or set KERAS_BEST_TEST_POSTGRES"
        )
    return POSTGRES_DSN.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.mark.slow
def test_two_processes_share_one_postgres_study(tmp_path):
    url = postgres_or_skip()
    name = f"keras-best-test-{uuid.uuid4().hex[:8]}"
    shared_study(url, name)
    directory = str(tmp_path / "models")
    try:
        run_workers(url, name, directory, n_workers=2, trials_each=5, k=1)
        study = optuna.load_study(study_name=name, storage=url)
        assert len(study.trials) == 10
        check_study_files(study, directory, 1)
        check_load_best(study, StudyBest(directory, keep_top_k=1))
    finally:
        optuna.delete_study(study_name=name, storage=url)
