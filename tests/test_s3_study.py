"""Optuna's `StudyBest` on an s3:// directory (a real S3 API server: moto's, on 127.0.0.1),
and the lock object its processes share there: created with a conditional write, never held
by two processes at once, taken over once its holder stopped renewing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import optuna
import pytest

from keras_best.integrations.optuna import USER_ATTR_PATH, StudyBest
from keras_best.storage import files, object_lock
from keras_best.storage.object_lock import ObjectLock
from tests.workers.optuna_worker import SCHEDULE, ScheduleSampler, build, data, make_objective, val_loss

pytestmark = pytest.mark.backend_neutral
optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bucket_of(url: str) -> str:
    return url[len("s3://"):].split("/", 1)[0]


def test_study_best_on_s3_keeps_exactly_the_top_k_trials(s3, s3_bucket, tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, sampler=ScheduleSampler(),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    best = StudyBest(f"{s3_bucket}/study", keep_top_k=2)
    best.optimize(study, make_objective(best, epochs=4), n_trials=6)
    assert [t.params["lr"] for t in study.trials] == SCHEDULE[:6]

    done = sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.value)
    top2 = {t.number for t in done[:2]}
    assert len(done) >= 3 and any(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    keys = s3.objects(bucket_of(s3_bucket))
    kept = {k.split("/")[1] for k in keys if k.startswith("study/trial-")}
    assert kept == {f"trial-{n:05d}" for n in top2}
    assert sorted(k for k in keys if not k.startswith("study/trial-")) == ["study/keras_best_study.json"]
    assert not [k for k in keys if "/.kb-" in k] and not s3.multipart_uploads(bucket_of(s3_bucket))
    assert json.loads(files.read_bytes(f"{s3_bucket}/study/keras_best_study.json"))["study_name"] == (
        study.study_name)

    for number in top2:  # each kept file, read back by stock Keras, gives its trial's value
        path = f"{s3_bucket}/study/{study.trials[number].user_attrs[USER_ATTR_PATH]}"
        stock = build()
        with files.local_copy(path) as local:
            stock.load_weights(local)
        assert val_loss(stock, *data()[2:]) == pytest.approx(study.trials[number].value, rel=1e-6)

    # Another process's view: the study from its storage, a new StudyBest on the same URL.
    reloaded = optuna.load_study(study_name=study.study_name, storage=storage)
    model = build()
    record = StudyBest(f"{s3_bucket}/study", keep_top_k=2).load_best(reloaded, model)
    assert record.trial_number == study.best_trial.number == done[0].number
    assert val_loss(model, *data()[2:]) == pytest.approx(study.best_value, rel=1e-6)
    assert best.cleanup(study) == []  # idempotent
    assert "study/.keras_best_study.lock" not in s3.objects(bucket_of(s3_bucket))  # released


def test_a_study_directory_on_a_store_without_conditional_writes_is_refused_at_construction():
    assert object_lock.supported("memory://conditions/study") and not object_lock.supported("ram://x/study")
    with pytest.raises(ValueError, match="conditional writes, which keras-best does on s3:// .* memory://"):
        StudyBest("ram://no-conditions/study")  # TensorFlow's in-memory file system: none


def test_a_missing_bucket_is_reported_at_construction(s3):
    with pytest.raises(ValueError, match="bucket 'kb-no-such-bucket' .* does not exist"):
        StudyBest("s3://kb-no-such-bucket/study")


# ------------------------------------------------------------------------------ the lock
COUNTER = """
import sys, time
from keras_best.storage import files
from keras_best.storage.object_lock import ObjectLock
lock_path, counter, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(rounds):
    with ObjectLock(lock_path, timeout=120):
        value = int(files.read_bytes(counter))  # read, wait, write: updates get lost without the lock
        time.sleep(0.02)
        files.write_bytes_atomic(counter, str(value + 1).encode())
print("DONE")
"""


def test_two_processes_never_hold_the_lock_at_once(s3, s3_bucket):
    lock, counter = f"{s3_bucket}/study/.lock", f"{s3_bucket}/counter"
    files.write_bytes_atomic(counter, b"0")
    env = dict(os.environ, PYTHONPATH=ROOT)
    workers = [subprocess.Popen([sys.executable, "-c", COUNTER, lock, counter, "10"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=180)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert files.read_bytes(counter) == b"20"  # no update lost: every read-modify-write held the lock alone
    assert "study/.lock" not in s3.objects(bucket_of(s3_bucket))


def test_a_stale_lock_is_taken_over_and_a_live_one_waited_for(s3, s3_bucket):
    path = f"{s3_bucket}/study/.lock"
    files.write_bytes_atomic(path, json.dumps({"owner": "dead:1:x", "expires": time.time() - 1}).encode())
    with ObjectLock(path, timeout=5) as lock:
        assert json.loads(files.read_bytes(path))["owner"] == lock.owner
        with pytest.raises(TimeoutError, match=f"held by {lock.owner}"):
            ObjectLock(path, timeout=0.5).acquire()
    assert "study/.lock" not in s3.objects(bucket_of(s3_bucket))

    files.write_bytes_atomic(path, json.dumps({"owner": "alive:2:y", "expires": time.time() + 60}).encode())
    with pytest.raises(TimeoutError, match="held by alive:2:y"):
        ObjectLock(path, timeout=0.5).acquire()
    assert json.loads(files.read_bytes(path))["owner"] == "alive:2:y"  # neither taken over nor deleted


def test_the_holder_renews_its_lease_and_releases_only_its_own_lock(s3, s3_bucket):
    path = f"{s3_bucket}/study/.lock"
    holder = ObjectLock(path, timeout=5, lease=0.6)
    with holder:
        time.sleep(1.3)  # two leases: without renewal a waiter would take it over now
        with pytest.raises(TimeoutError):
            ObjectLock(path, timeout=0.3).acquire()
        assert not holder.lost
    assert "study/.lock" not in s3.objects(bucket_of(s3_bucket))

    holder.acquire()
    holder._stop.set()  # a holder that stalls past its lease (its renewals stop)
    time.sleep(0.7)
    with ObjectLock(path, timeout=5) as other:
        holder.release()  # the stalled holder's release leaves the new holder's lock alone
        assert json.loads(files.read_bytes(path))["owner"] == other.owner


def test_a_half_deleted_trial_never_looks_saved_and_the_next_sweep_finishes_it(s3, s3_bucket):
    """A crash mid-removal (its record deleted first) leaves files without `keras_best.json`:
    no reader takes that trial for a saved one, and the next sweep removes the rest."""
    from keras_best.integrations.search import SearchDirectory, first_saved

    bucket, study = bucket_of(s3_bucket), f"{s3_bucket}/study"
    for key in ["trial-00001/best.weights.h5", "trial-00001/keras_best_history.jsonl",
                "trial-00002/trial.json", "trial-00002/best.weights.h5", "trial-00003/best.weights.h5"]:
        s3.client.put_object(Bucket=bucket, Key=f"study/{key}", Body=b"x")
    directory = SearchDirectory(study, keep_top_k=1)
    assert first_saved([1], lambda n: f"{study}/trial-{n:05d}") is None
    with directory.lock():
        directory.claim("s", framework="optuna")
        removed = directory.sweep(lambda name: name in ("trial-00001", "trial-00002"), keep_files=["trial.json"])
    assert removed == [f"{study}/trial-00001", f"{study}/trial-00002"]
    assert sorted(s3.objects(bucket)) == ["study/keras_best_study.json", "study/trial-00002/trial.json",
                                          "study/trial-00003/best.weights.h5"]
