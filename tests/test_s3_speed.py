"""The write path's requests on a real S3 server (moto's, on 127.0.0.1): how
many one update sends (bounded, no listing), and the history on an object
store (one small part per update, the file written anew every
`PARTS_PER_FILE` parts) read back exactly after many updates and after an
interruption at any point of a commit."""

from __future__ import annotations

import dataclasses
import random
import threading
import time

import numpy as np
import pytest

from keras_best import BestWeightsTracker, load_best
from keras_best.cli.summary import summarize
from keras_best.core.policy import RunState
from keras_best.storage import files, history, journal
from keras_best.storage.record import RunRecord
from tests.conftest import make_model, run_json

pytestmark = [pytest.mark.backend_neutral, pytest.mark.filterwarnings("ignore:resume=True saves the training state")]


@pytest.fixture
def requests(s3):
    """The requests the server answers from now on: (method, key, query), as a list that grows."""
    wsgi = s3._server._server  # moto's werkzeug server
    app, seen, lock = wsgi.app, [], threading.Lock()

    def counting(environ, start_response):
        with lock:
            seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")))
        return app(environ, start_response)

    wsgi.app = counting
    yield seen
    wsgi.app = app


def listings(seen):
    return [r for r in seen if r[0] == "GET" and "list-type" in r[2]]


def test_one_update_sends_few_requests_and_no_listing(s3_bucket, requests):
    model = make_model()
    tracker = BestWeightsTracker(model, f"{s3_bucket}/run/best.weights.h5", resume=True, async_save=False,
                                 verbose=0)
    tracker.update(0, {"val_loss": 1.0})
    counts = {}
    for epoch, value, what in [(1, 0.5, "save"), (2, 0.9, "state only"), (3, 0.1, "save")]:
        requests.clear()
        tracker.update(epoch, {"val_loss": value})
        assert listings(requests) == [], what
        counts.setdefault(what, []).append(len(requests))
    tracker.finish()
    # A save with the training state: 2 uploads, a history part, the record twice
    # with its journal, a copy and a delete per renamed file (keras-best 0.3-dev: 45, 15 listings).
    assert max(counts["save"]) <= 12, counts
    assert max(counts["state only"]) <= 8, counts
    plain = BestWeightsTracker(make_model(), f"{s3_bucket}/plain/best.weights.h5", async_save=False, verbose=0)
    plain.update(0, {"val_loss": 1.0})
    requests.clear()
    plain.update(1, {"val_loss": 2.0})  # nothing saved: a history part and the record
    assert len(requests) <= 2 and not listings(requests), requests
    plain.finish()
    assert load_best(make_model(), f"{s3_bucket}/run").epoch == 3


def test_the_history_is_appended_in_parts_and_read_back_exactly(s3_bucket, s3, monkeypatch):
    monkeypatch.setattr(history, "PARTS_PER_FILE", 4)  # written anew with its parts every 4 updates
    directory = f"{s3_bucket}/run"
    rng = np.random.default_rng(0)
    values = [float(v) for v in rng.uniform(0.1, 1.0, 23)]
    tracker = BestWeightsTracker(make_model(), f"{directory}/e{{epoch}}.weights.h5", keep_top_k=2, verbose=0,
                                 resume=True)
    for epoch, v in enumerate(values[:11]):
        tracker.update(epoch, {"val_loss": v})
    tracker.finish()
    resumed = BestWeightsTracker(make_model(), f"{directory}/e{{epoch}}.weights.h5", keep_top_k=2, verbose=0,
                                 resume=True)
    for epoch, v in enumerate(values[11:], start=11):
        resumed.update(epoch, {"val_loss": v})
    resumed.finish()
    expected = [h["value"] for h in resumed.history]
    assert expected == pytest.approx(values) and len(expected) == 23
    assert [h["value"] for h in summarize(directory, history=True)["history"]] == expected
    assert [h["value"] for h in run_json(directory)["history"]] == expected
    record = RunRecord.read(directory)
    bucket = s3_bucket[len("s3://"):]
    names = {k.rsplit("/", 1)[-1] for k in s3.objects(bucket)}
    parts = {n for n in names if n.startswith("keras_best_history-")}
    assert 0 < len(record.history_parts) <= 4 and parts == set(record.history_files()[1:])  # no stray part
    best = int(np.argmin(values))
    assert load_best(make_model(), directory).epoch == best


def _txn(entries, start):
    data = history.encode(entries[start:])
    record = RunRecord(monitor="val_loss", mode="min", state=RunState(), history_count=len(entries),
                       history_bytes=len(history.encode(entries)))
    return journal.Transaction(record=record, history=data, history_head=lambda: history.encode(entries[:start]))


@pytest.mark.parametrize("seed", [0, 1])
def test_an_interrupted_commit_leaves_the_history_the_record_names(s3_bucket, s3, monkeypatch, seed):
    """Commits of 1-3 entries; at random, one stops after its history write
    (a crash before the record), or after the record (before the parts it
    folded into the file are deleted). After each, the record read from the
    store gives exactly the entries committed so far; the next writer starts
    from the store (what it knew is lost, as after a kill) and goes on."""
    monkeypatch.setattr(history, "PARTS_PER_FILE", 3)
    directory, rand = f"{s3_bucket}/run", random.Random(seed)
    committed: list[dict] = []
    before = None  # what the writer knows of the record (None: read from the store)
    for i in range(40):
        entries = committed + [{"epoch": len(committed) + k, "value": rand.random(), "improved": False,
                                "metrics": {"val_loss": i}} for k in range(rand.randint(1, 3))]
        txn = _txn(entries, len(committed))
        stop = rand.choice(["none", "none", "after history", "after record"])
        if stop != "none":  # the commit's steps by hand, up to where it stops
            known = (before or RunRecord.read(directory)).history_parts if committed else None
            offset = txn.record.history_bytes - len(txn.history)
            new_parts, _ = history.append(directory, offset, txn.history, txn.history_head, known)
            before = None
            if stop == "after record":  # the parts folded into the file are not deleted
                dataclasses.replace(txn.record, history_parts=new_parts).write(directory)
                committed = entries
                journal.roll_forward(directory, RunRecord.read(directory))  # the next start: stray parts go
        else:
            journal.commit(directory, txn, before)
            committed, before = entries, txn.record
        if committed:
            record = RunRecord.read(directory)
            assert record.history(directory) == committed, (i, stop)
    bucket = s3_bucket[len("s3://"):]
    assert not any(files.is_tmp_name(k.rsplit("/", 1)[-1]) for k in s3.objects(bucket))


def test_a_reader_whose_parts_were_folded_into_the_file_reads_its_history(s3_bucket, monkeypatch):
    """A reader holds a record listing parts; the writer then folds them into
    the file (every `PARTS_PER_FILE` commits) and deletes them: the reader's
    record still reads exactly its own entries (a re-read of the record)."""
    monkeypatch.setattr(history, "PARTS_PER_FILE", 3)
    directory = f"{s3_bucket}/run"
    tracker = BestWeightsTracker(make_model(), f"{directory}/best.weights.h5", async_save=False, verbose=0)
    for epoch in range(3):
        tracker.update(epoch, {"val_loss": 1.0 + epoch})
    held = RunRecord.read(directory)
    expected = held.history(directory)
    assert len(held.history_parts) == 2 and len(expected) == 3
    for epoch in (3, 4):  # a third part, then the fold: the file anew with the parts and this entry, the parts deleted
        tracker.update(epoch, {"val_loss": 1.0 + epoch})
    assert RunRecord.read(directory).history_parts == () and not files.exists(f"{directory}/{held.history_files()[1]}")
    assert held.history(directory) == expected
    tracker.finish()


@pytest.fixture
def slow_server(s3):
    """Make every request the server answers take `delay[0]` seconds more (0: none)."""
    wsgi = s3._server._server  # moto's werkzeug server
    app, delay = wsgi.app, [0.0]

    def slow(environ, start_response):
        time.sleep(delay[0])
        return app(environ, start_response)

    wsgi.app = slow
    yield delay
    wsgi.app = app


@pytest.mark.slow
def test_updates_do_not_wait_for_a_slow_store(s3_bucket, slow_server):
    """As on a slow local disk (test_async_writer.py, test_memory.py), here
    with every request 0.15 s slower: with a budget of many saves, `update()`
    sends no request itself and returns while the writer is busy; with the
    default budget of one save it waits for the commit in flight at most,
    never for a backlog of them."""
    directory, model, delay = f"{s3_bucket}/run", make_model(), 0.15

    def started(name, **options):
        tracker = BestWeightsTracker(model, f"{directory}/{name}/{{epoch:02d}}.weights.h5", verbose=0, **options)
        tracker.update(0, {"val_loss": 1.0})
        tracker.finish()
        return tracker

    sync = started("sync", async_save=False)
    slow_server[0] = delay
    start = time.perf_counter()
    sync.update(1, {"val_loss": 0.9})  # one whole commit, in this thread
    one_commit = time.perf_counter() - start
    sync.finish()

    slow_server[0] = 0.0
    ahead = started("ahead", max_host_memory=1 << 30)
    slow_server[0] = delay
    for epoch, value in [(1, 0.9), (2, 0.8), (3, 0.85)]:
        start = time.perf_counter()
        ahead.update(epoch, {"val_loss": value})
        assert time.perf_counter() - start < 0.8 * delay, epoch  # less than one request
    assert RunRecord.read(f"{directory}/ahead").best.epoch == 0  # nothing of it in the store yet
    ahead.finish()

    slow_server[0] = 0.0
    bounded = started("bounded")
    slow_server[0] = delay
    waits = []
    for epoch in range(1, 4):
        start = time.perf_counter()
        bounded.update(epoch, {"val_loss": 1.0 - epoch / 10})
        waits.append(time.perf_counter() - start)
    bounded.finish()
    slow_server[0] = 0.0
    assert waits[0] < 0.8 * delay and max(waits) < 1.3 * one_commit, (waits, one_commit)
    for name, best, epochs in (("ahead", 2, 4), ("bounded", 3, 4)):
        record = RunRecord.read(f"{directory}/{name}")
        assert record.best.epoch == best and len(record.history(f"{directory}/{name}")) == epochs
    assert load_best(make_model(), f"{directory}/bounded").epoch == 3
