"""Run directories on a real S3 API server (moto's server mode on 127.0.0.1, through s3fs):
every save format, top-k, resume, `load_best`, `inspect` and `compare`, and nothing left
behind: no temp objects, no unfinished multipart uploads (listed through the S3 API), no
local staging files, even after SIGKILLs at random instants. Files are read back with
Keras's stock loaders from local copies."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import pytest

from keras_best import BestWeightsTracker, load_best
from keras_best.cli import commands as cli
from keras_best.core import names
from keras_best.loading import read_best
from keras_best.storage import files, manifest, staging
from keras_best.storage import record as run_record
from tests.conftest import BACKEND, make_model, model_at, run_json, train, weights_equal

pytestmark = pytest.mark.backend_neutral

FRAMEWORK = {manifest.MANIFEST_NAME, manifest.HISTORY_NAME}
MiB = 2**20


def bucket_of(url: str) -> str:
    return url[len("s3://"):].split("/", 1)[0]


def objects(s3, run: str) -> dict[str, int]:
    """The objects under the run directory `run` (an s3:// URL): name relative to it -> size."""
    prefix = run[len("s3://"):].split("/", 1)[1] + "/"
    return {k[len(prefix):]: n for k, n in s3.objects(bucket_of(run)).items() if k.startswith(prefix)}


def leftovers(s3, run: str) -> dict[str, list]:
    """What a run must not leave: temp objects, unfinished uploads, files in this process's staging."""
    own = staging.own_folder()
    return {"tmp_objects": sorted(n for n in objects(s3, run) if files.is_tmp_name(n.split("/")[0])),
            "multipart_uploads": [u["Key"] for u in s3.multipart_uploads(bucket_of(run))],
            "staging_files": [os.path.join(r, n) for r, _, ns in os.walk(own) for n in ns if n != staging.OWNER]}


NOTHING_LEFT = {"tmp_objects": [], "multipart_uploads": [], "staging_files": []}


def download(run: str, name: str, local_dir) -> str:
    """A local copy of the saved `name` of `run` (a file, a directory, or a sharded set's
    files), for the stock loaders; returns the local path of `name`."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(run)
    os.makedirs(local_dir, exist_ok=True)
    for member in files.members(run, name):
        fs.get(f"{run}/{member}", os.path.join(local_dir, member), recursive=True)
    return os.path.join(local_dir, name)


SHARD = 150 / 1024**3  # each variable of make_model() (128 bytes at most) a shard of its own
FORMATS = {
    "weights": ("best.weights.h5", {}, {"best.weights.h5"}),
    "keras_top2": ("m-{epoch:02d}.keras", {"keep_top_k": 2}, {"m-02.keras", "m-04.keras"}),
    "sharded_top2": ("s-{epoch:02d}.weights.json", {"keep_top_k": 2, "max_shard_size": SHARD},
                     {"s-02.weights.json", "s-04.weights.json"}),
    "savedmodel": ("export", {"save_format": "savedmodel"}, {"export"}),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_reads_back_with_the_stock_loaders(s3, s3_bucket, tmp_path, fmt):
    if fmt == "savedmodel" and BACKEND != "tensorflow":
        pytest.skip("SavedModel export needs TensorFlow")
    name, options, kept = FORMATS[fmt]
    run = f"{s3_bucket}/runs/{fmt}"
    model = make_model()
    tracker = train(model, f"{run}/{name}", save_last=True, optimizer=keras.optimizers.Adam(), **options)

    found = objects(s3, run)
    tops = {n.split("/")[0] for n in found}
    parts = {n for n in tops if n.startswith(names.HISTORY_PART_PREFIX)}  # the history appended on S3
    assert parts == set(run_record.read(run).history_files()) - FRAMEWORK  # those the record lists
    tops -= parts
    if fmt == "sharded_top2":  # whole sets: the index and its shards
        kept = kept | {m for k in kept for m in files.members(run, k)}
        assert len(kept) >= 2 * 3  # each set: its index and two shards or more
    assert tops == kept | FRAMEWORK | {"keras_best_last.h5"}
    assert leftovers(s3, run) == NOTHING_LEFT
    data = run_json(run)
    assert (data["best"]["epoch"], data["best"]["value"]) == (3, 1.0) and "pending" not in data

    restored = make_model(seed=7)
    record = load_best(restored, run)
    assert (record.epoch, record.path) == (3, tracker.best_path) and weights_equal(restored, model_at(3))
    local = download(run, files.basename(record.path), tmp_path / "copy")
    if fmt in ("weights", "sharded_top2"):
        stock = make_model(seed=7)
        stock.load_weights(local)
        assert weights_equal(stock, model_at(3))
    elif fmt == "keras_top2":
        assert weights_equal(keras.models.load_model(local), model_at(3))
        second = download(run, "m-02.keras", tmp_path / "second")
        assert weights_equal(keras.models.load_model(second), model_at(1))
    else:
        import tensorflow as tf

        x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
        loaded = tf.saved_model.load(local)  # kept: its functions need its variables
        np.testing.assert_allclose(loaded.serve(x).numpy(), model_at(3)(x).numpy(), rtol=1e-6)
    assert leftovers(s3, run) == NOTHING_LEFT  # the reads staged their copies and removed them


def _step(model, optimizer, epoch):
    """One deterministic training step: Adam on fixed gradients (its moments change each step)."""
    rng = np.random.default_rng(epoch)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32"))
             for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)


def _trained(run: str, epochs: range, resume: bool) -> tuple[keras.Model, BestWeightsTracker]:
    model, optimizer = make_model(), keras.optimizers.Adam(0.1)
    tracker = BestWeightsTracker(model, f"{run}/e{{epoch:02d}}.weights.h5", monitor="val_loss", keep_top_k=2,
                                 save_last=True, optimizer=optimizer, resume=resume, verbose=0)
    for epoch in tracker.epochs(epochs.stop):
        _step(model, optimizer, epoch)
        tracker.update(epoch, {"val_loss": [3.0, 2.0, 2.5, 1.0, 1.5, 0.5][epoch]})
    tracker.finish()
    return model, tracker


def test_resume_continues_exactly_as_an_uninterrupted_run(s3, s3_bucket):
    whole, _ = _trained(f"{s3_bucket}/whole", range(6), resume=False)
    _trained(f"{s3_bucket}/split", range(3), resume=False)
    resumed, tracker = _trained(f"{s3_bucket}/split", range(6), resume=True)

    assert tracker.initial_epoch == 3
    assert weights_equal(resumed, whole)  # the optimizer's moments came back from S3 too
    a, b = run_json(f"{s3_bucket}/whole"), run_json(f"{s3_bucket}/split")
    assert [(k["path"], k["epoch"]) for k in b["kept"]] == [(k["path"], k["epoch"]) for k in a["kept"]] == [
        ("e06.weights.h5", 5), ("e04.weights.h5", 3)]
    assert b["history"] == a["history"]
    restored = make_model(seed=3)
    assert load_best(restored, f"{s3_bucket}/split").epoch == 5
    reference = make_model(seed=4)
    load_best(reference, f"{s3_bucket}/whole")
    assert weights_equal(restored, reference)
    assert leftovers(s3, f"{s3_bucket}/split") == NOTHING_LEFT


def test_inspect_and_compare_read_s3_run_directories(s3, s3_bucket, capsys):
    train(make_model(), f"{s3_bucket}/a/best.weights.h5")
    train(make_model(), f"{s3_bucket}/b/best.weights.h5", values=[0.5, 0.7])
    assert cli.main(["inspect", f"{s3_bucket}/a", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["best"]["epoch"], summary["best"]["value"]) == (3, 1.0)
    assert cli.main(["inspect", f"{s3_bucket}/a"]) == 0
    assert "best.weights.h5" in capsys.readouterr().out
    assert cli.main(["compare", f"{s3_bucket}/a", f"{s3_bucket}/b", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)["runs"]
    assert [(r["directory"], r["rank"]) for r in ranked] == [(f"{s3_bucket}/b", 1), (f"{s3_bucket}/a", 2)]


# ----------------------------------------------------------------------------- leaks
def _upload(s3, bucket: str, key: str) -> str:
    """An unfinished multipart upload of `key` with one 5 MiB part, as a kill mid-upload leaves it."""
    upload = s3.client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"\0" * (5 * MiB))
    return upload


TMP = files.tmp_path("best.weights.h5")


def test_the_runs_unfinished_uploads_are_aborted_at_the_next_start_and_at_finish(s3, s3_bucket):
    bucket, run = bucket_of(s3_bucket), f"{s3_bucket}/runs/r1"
    others = ["runs/r1/best.weights.h5",  # not a temp name: not one of the run's writes
              f"runs/r10/{TMP}",  # another run whose name starts alike
              f"runs/{TMP}", f"other/{TMP}"]
    for key in [f"runs/r1/{TMP}", f"runs/r1/{files.tmp_path('export')}/variables/v.data", *others]:
        _upload(s3, bucket, key)

    # Killed in its first upload: the run directory holds no object yet, only the upload.
    tracker = BestWeightsTracker(make_model(), f"{run}/best.weights.h5", monitor="val_loss", resume=True,
                                 optimizer=keras.optimizers.Adam(), verbose=0)
    assert sorted(u["Key"] for u in s3.multipart_uploads(bucket)) == sorted(others)
    tracker.update(0, {"val_loss": 1.0})
    _upload(s3, bucket, f"runs/r1/{files.tmp_path('keras_best_last.h5')}")  # left by a failed upload
    tracker.finish()
    assert set(objects(s3, run)) == {"best.weights.h5", "keras_best_last.h5"} | FRAMEWORK
    assert sorted(u["Key"] for u in s3.multipart_uploads(bucket)) == sorted(others)


STAGER = """
import importlib.util, os, signal, sys, time
spec = importlib.util.spec_from_file_location("staging", sys.argv[1])
staging = importlib.util.module_from_spec(spec); spec.loader.exec_module(staging)
with staging.scratch() as folder:
    with open(os.path.join(folder, "big.h5"), "wb") as f:
        f.write(b"x" * 1000000)
    print(staging.own_folder(), flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
"""


@pytest.mark.parametrize("where", ["s3", "local"])
def test_the_staging_of_a_killed_process_goes_at_the_next_start(s3, s3_bucket, tmp_path, monkeypatch, where):
    """A process killed mid-upload leaves its staging folder (the issue: 1.1 GB after 16 kills);
    the next start of a run anywhere on the machine removes it, and never a live process's."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    procs = {how: subprocess.Popen([sys.executable, "-c", STAGER, staging.__file__, how], stdout=subprocess.PIPE,
                                   text=True) for how in ("kill", "live")}
    try:
        folders = {how: p.stdout.readline().strip() for how, p in procs.items()}
        assert procs["kill"].wait(timeout=30) == -signal.SIGKILL
        assert all(os.path.dirname(f) == os.path.join(str(tmp_path), staging.ROOT_NAME) for f in folders.values())
        staged = [os.path.join(r, n) for r, _, ns in os.walk(folders["kill"]) for n in ns if n != staging.OWNER]
        assert [os.path.getsize(f) for f in staged] == [1000000]  # left by the kill
        run = f"{s3_bucket}/r" if where == "s3" else str(tmp_path / "r")
        train(make_model(), f"{run}/best.weights.h5", values=[1.0])
        assert not os.path.exists(folders["kill"])
        assert os.path.exists(folders["live"])  # its process still runs
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_load_best_names_the_recorded_file_right_after_a_kill_mid_rename(s3, s3_bucket, tmp_path):
    """Killed after the journal was written, before the temp object was renamed (a copy then
    a delete on S3): `load_best` reads the temp object and names the recorded file."""
    run = f"{s3_bucket}/r"
    train(make_model(), f"{run}/best.weights.h5")
    newer = model_at(50)
    newer.save_weights(str(tmp_path / "newer.weights.h5"))
    s3.client.upload_file(str(tmp_path / "newer.weights.h5"), bucket_of(run), f"r/{TMP}")
    data = run_json(run)
    data["best"] = data["kept"][0] = {**data["best"], "epoch": 50, "value": 0.1}
    data["pending"] = {"renames": [[TMP, "best.weights.h5"]], "deletes": []}
    del data["history"]
    s3.client.put_object(Bucket=bucket_of(run), Key=f"r/{manifest.MANIFEST_NAME}", Body=json.dumps(data).encode())

    reader = make_model(seed=7)
    record = load_best(reader, run)
    assert (record.epoch, record.path) == (50, f"{run}/best.weights.h5")
    assert weights_equal(reader, newer)
    assert read_best(run).path == record.path


# ----------------------------------------------------------------------------- kills
KILLS = 3
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers", "s3_kill_worker.py")


def _start(run: str, epochs: int, tmpdir: str) -> tuple[subprocess.Popen, int]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=tmpdir)
    proc = subprocess.Popen([sys.executable, WORKER, run, str(epochs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert line.startswith("READY"), f"the worker did not start: {line!r} {proc.stderr.read()[-3000:]}"
    return proc, int(line.split()[1])


def _leaks(s3, run: str, tmpdir: str) -> dict[str, int]:
    staged = [os.path.join(r, n) for r, _, ns in os.walk(tmpdir) for n in ns]
    return {"tmp_objects": sum(files.is_tmp_name(n.split("/")[0]) for n in objects(s3, run)),
            "multipart_uploads": len(s3.multipart_uploads(bucket_of(run))),
            "staged_files": len(staged), "staged_bytes": sum(os.path.getsize(f) for f in staged)}


def _check_best(run: str) -> list[str]:
    """Problems of the best as `load_best` reads it: other weights than its epoch's, a temp name."""
    from tests.workers.s3_kill_worker import build, pattern

    if not files.exists(manifest.manifest_path(run)) or not run_json(run).get("best"):
        return []
    model = build()
    record = load_best(model, run)
    problems = []
    if not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), pattern(model, record.epoch))):
        problems.append(f"load_best says epoch {record.epoch} but loaded other weights")
    if files.is_tmp_name(files.basename(record.path)):
        problems.append(f"load_best names a temp object: {record.path}")
    return problems


@pytest.mark.slow
def test_random_kills_leave_nothing_behind_after_a_restart(s3, s3_bucket, tmp_path):
    """SIGKILL at random instants of a worker writing ~12.6 MB files to S3 in 5 MiB parts, each
    followed by a restart (resume=True): the best always loads with its epoch's exact weights
    under its recorded name, and once the last restart finishes nothing is left: no temp object,
    no unfinished multipart upload, no file in the worker's temp directory."""
    run, tmpdir = f"{s3_bucket}/run", str(tmp_path / "tmp")
    os.makedirs(tmpdir)
    rng = random.Random(20261206)
    left_by_kills, problems = [], []
    for i in range(KILLS):
        proc, _ = _start(run, 1_000_000, tmpdir)
        time.sleep(rng.uniform(0.5, 3.0))
        proc.kill()
        proc.wait(timeout=60)
        left_by_kills.append(_leaks(s3, run, tmpdir))
        problems += [f"kill {i}: {p}" for p in _check_best(run)]
    last = run_json(run)["last"]["epoch"]
    proc, initial = _start(run, last + 2, tmpdir)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "DONE" in out, err[-3000:]
    print(f"\nS3 kills: left by each kill (before its restart): {json.dumps(left_by_kills)}")
    assert initial == last + 1, "resume continues after the last saved epoch"
    assert problems == [] and _check_best(run) == []
    assert _leaks(s3, run, tmpdir) == {"tmp_objects": 0, "multipart_uploads": 0, "staged_files": 0,
                                       "staged_bytes": 0}
    record = run_record.RunRecord.read(run)  # and no file uploaded straight to a name the record does not name
    assert {n for n in objects(s3, run)} == record.named_files() | set(record.history_files()) | FRAMEWORK
