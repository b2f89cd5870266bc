"""Saves uploaded straight to their final names on a real S3 server (moto's, on
127.0.0.1): a name the record does not name yet is uploaded under that name
(no server-side copy, no temp object), a name it names goes through a temp
object; an interruption anywhere between the marker and its delete leaves a
run whose next start removes every file the record does not name, and
`load_best` always reads the recorded best's exact weights."""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest

from keras_best import BestWeightsTracker, load_best
from keras_best.core import names
from keras_best.storage import files, history, journal, uploads
from keras_best.storage.record import RunRecord
from tests.conftest import make_model, model_at, perturb, run_json

pytestmark = [pytest.mark.backend_neutral, pytest.mark.filterwarnings("ignore:resume=True saves the training state"),
              pytest.mark.filterwarnings("ignore:The previous tracker")]


@pytest.fixture
def copies(s3):
    """The server-side copies the server answers from now on (keys copied to), as a list that grows."""
    wsgi = s3._server._server  # moto's werkzeug server
    app, seen, lock = wsgi.app, [], threading.Lock()

    def counting(environ, start_response):
        if environ.get("HTTP_X_AMZ_COPY_SOURCE"):
            with lock:
                seen.append(environ.get("PATH_INFO", "").rsplit("/", 1)[-1])
        return app(environ, start_response)

    wsgi.app = counting
    yield seen
    wsgi.app = app


def names_in(s3, run: str) -> set[str]:
    bucket, prefix = run[len("s3://"):].split("/", 1)
    return {k[len(prefix) + 1:] for k in s3.objects(bucket) if k.startswith(prefix + "/")}


def expected_names(run: str) -> set[str]:
    """What a settled run directory holds: the files its record names, its record and history
    (nothing before its first record)."""
    if not files.exists(f"{run}/{names.MANIFEST_NAME}"):
        return set()
    record = RunRecord.read(run)
    return record.named_files() | set(record.history_files()) | {names.MANIFEST_NAME}


def test_new_names_are_uploaded_straight_and_named_ones_through_a_temp_object(s3, s3_bucket, copies):
    run = f"{s3_bucket}/tpl"
    model = make_model()
    tracker = BestWeightsTracker(model, f"{run}/e{{epoch}}.weights.h5", keep_top_k=2, async_save=False, verbose=0,
                                 resume=True, keep_last=2)
    for epoch, value in enumerate([3.0, 2.0, 2.5, 1.0]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": value})
        assert copies == [], epoch  # every name new: the best's and the state's (keep_last=2)
    tracker.finish()
    assert names_in(s3, run) == expected_names(run) >= {"e2.weights.h5", "e4.weights.h5"}  # {epoch} counts from 1
    reader = make_model(seed=3)
    assert load_best(reader, run).epoch == 3
    assert all(np.array_equal(a, b) for a, b in zip(reader.get_weights(), model_at(3).get_weights()))

    fixed = f"{s3_bucket}/fixed"
    tracker = BestWeightsTracker(model, f"{fixed}/best.weights.h5", async_save=False, verbose=0, resume=True)
    for epoch, value in enumerate([3.0, 2.0]):
        tracker.update(epoch, {"val_loss": value})
    tracker.finish()
    # the first save's names were new; the second overwrote them through temp objects
    assert sorted(copies) == ["best.weights.h5", "keras_best_last.h5"]
    assert names_in(s3, fixed) == expected_names(fixed)


class Crash(BaseException):
    """Stands in for a kill: nothing of the commit runs after it."""


def _crash_at(monkeypatch, point: str) -> None:
    """Make the next commit stop at `point`: after the marker (in the first
    upload), after the uploads (before the history and the record), or after
    the record (before the marker is deleted)."""
    if point == "in the upload":
        real = files.write_durably

        def write_durably(path, write, straight=None):
            if straight is not None:
                real(path, write, straight)  # the object is there, its upload "interrupted" after
                raise Crash(point)
            return real(path, write, straight)

        monkeypatch.setattr(files, "write_durably", write_durably)
        monkeypatch.setattr(files, "remove", lambda path, missing_ok=False: None)  # a dead process cleans nothing
    elif point == "before the record":
        def append(*args, **kwargs):
            raise Crash(point)

        monkeypatch.setattr(history, "append", append)
    else:
        real_remove = files.remove_file

        def remove_file(path):
            if uploads.is_marker(files.basename(path)):
                raise Crash(point)
            return real_remove(path)

        monkeypatch.setattr(files, "remove_file", remove_file)


@pytest.mark.parametrize("seed", [0, 1])
def test_an_interrupted_straight_upload_is_removed_at_the_next_start(s3, s3_bucket, monkeypatch, seed):
    """Updates of a top-2 run with `{epoch}` names and `keep_last=2` states; at
    random, one is interrupted (as by a kill) after its marker, after its
    uploads or after its record, and the run restarts (`resume=True`). After
    each restart the directory holds exactly what the record names, and
    `load_best` reads the best of the recorded history, with its exact weights."""
    rand = random.Random(seed)
    run = f"{s3_bucket}/run"
    path = f"{run}/e{{epoch:02d}}.weights.h5"
    model = make_model()

    def start():
        return BestWeightsTracker(model, path, keep_top_k=2, keep_last=2, async_save=False, verbose=0, resume=True)

    tracker, crashes, epoch = start(), 0, 0
    while epoch < 14:
        perturb(model, epoch)
        point = rand.choice([None, None, "in the upload", "before the record", "after the record"])
        with monkeypatch.context() as patch:
            if point is not None:
                _crash_at(patch, point)
            try:
                tracker.update(epoch, {"val_loss": rand.uniform(0.1, 1.0)})
            except Crash:
                crashes += 1
            else:
                point = None
        epoch += 1
        if point is not None:  # the process is gone: a new one starts from the store
            tracker = start()
            assert names_in(s3, run) == expected_names(run), (epoch, point)
            entries = RunRecord.read(run).history(run) if expected_names(run) else []
            if entries:
                best = min(entries, key=lambda e: e["value"])["epoch"]
                reader = make_model(seed=5)
                assert load_best(reader, run).epoch == best, (epoch, point)
                assert all(np.array_equal(a, b) for a, b in zip(reader.get_weights(), model_at(best).get_weights()))
    tracker.finish()
    assert crashes >= 3
    assert names_in(s3, run) == expected_names(run)
    assert not any(files.is_tmp_name(n) for n in names_in(s3, run))


def test_a_markers_unfinished_uploads_and_orphans_go_and_nothing_the_record_names(s3, s3_bucket):
    run = f"{s3_bucket}/r"
    bucket, prefix = s3_bucket[len("s3://"):], "r/"
    model = make_model()
    tracker = BestWeightsTracker(model, f"{run}/e{{epoch}}.weights.h5", keep_top_k=2, verbose=0)
    for epoch, value in enumerate([2.0, 1.0]):
        perturb(model, epoch)
        tracker.update(epoch, {"val_loss": value})
    tracker.finish()
    named = RunRecord.read(run).named_files()
    s3.client.put_object(Bucket=bucket, Key=prefix + "e7.weights.h5", Body=b"half a save")
    upload = s3.client.create_multipart_upload(Bucket=bucket, Key=prefix + "e8.weights.h5")["UploadId"]
    s3.client.upload_part(Bucket=bucket, Key=prefix + "e8.weights.h5", UploadId=upload, PartNumber=1,
                          Body=b"\0" * 5 * 2**20)
    s3.client.put_object(Bucket=bucket, Key=prefix + "mine.txt", Body=b"not the run's")  # listed by no marker
    marker = {"uploads": ["e7.weights.h5", "e8.weights.h5", *sorted(named), "../outside.h5", 3]}
    s3.client.put_object(Bucket=bucket, Key=prefix + uploads.marker_name(), Body=json.dumps(marker).encode())

    journal.roll_forward(run, RunRecord.read(run))  # what the next start does
    assert names_in(s3, run) == expected_names(run) | {"mine.txt"}
    assert s3.multipart_uploads(bucket) == []
    assert run_json(run)["best"]["epoch"] == 1
