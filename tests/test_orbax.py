"""Model-parallel runs saved through Orbax (JAX): real processes with CPU devices.

Each test starts tests/workers/orbax_worker.py in fresh processes (the number
of CPU devices is fixed when JAX starts): 1 process x 4 devices, or 2
processes x 2 devices over localhost. A `LayoutMap` splits the Dense kernels
over the "model" axis, so no device holds a whole kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("orbax.checkpoint")

from tests.conftest import BACKEND  # noqa: E402
from tests.processes import ROOT, WORKERS, free_ports, run_all, run_once, shared_root  # noqa: E402

pytestmark = pytest.mark.skipif(BACKEND != "jax", reason="Orbax saves of sharded models: JAX backend only")
WORKER = os.path.join(WORKERS, "orbax_worker.py")


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    return dict(env, PYTHONPATH=ROOT, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def _run(mode: str, run_dir, out_dir, mesh: str = "1x4", devices: int = 4, check: bool = True, **env: str):
    proc = subprocess.run([sys.executable, WORKER, mode, str(run_dir), str(out_dir), mesh], cwd=ROOT,
                          env=_env(devices, **env), capture_output=True, text=True, timeout=240)
    if check and proc.returncode != 0:
        raise AssertionError(f"{mode} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _json(out_dir, name):
    with open(os.path.join(out_dir, name)) as f:
        return json.load(f)


def _weights(npz, prefix):
    return [npz[k] for k in sorted((k for k in npz.files if k.startswith(prefix)), key=lambda k: int(k.rsplit("_")[-1]))]


def _saves(run_dir):
    return sorted(n for n in os.listdir(run_dir) if n.startswith("best-"))


def test_fit_best_loads_onto_another_mesh_and_one_device(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    _run("fit", run, out)
    record = json.loads((run / "keras_best.json").read_text())
    assert record["save_format"] == "orbax"
    losses = _json(out, "fit0.json")["losses"]
    top2 = sorted(range(len(losses)), key=lambda e: losses[e])[:2]
    assert _saves(run) == sorted(f"best-{e + 1:03d}" for e in top2)  # top-k evicted whole directories
    assert not [n for n in os.listdir(run) if "tmp" in n]
    best = int(np.argmin(losses))
    assert os.listdir(run / f"best-{best + 1:03d}") == ["0"]  # one Orbax step, as OrbaxCheckpoint writes
    epochs = np.load(out / "epochs0.npz")
    expected = _weights(epochs, f"e{best}_")
    for mesh, devices in (("2x2", 4), ("none", 1)):
        _run("load", run, out, mesh=mesh, devices=devices)
        info = _json(out, "load0.json")
        assert info["best_epoch"] == best
        assert ("model" in info["sharding"]) == (mesh != "none")  # restored onto the current layout
        loaded = np.load(out / "load0.npz")
        for prefix in ("best_", "load_weights_", "load_model_")[: 3 if mesh != "none" else 1]:
            got = _weights(loaded, prefix)  # load_best, then Keras's own loaders (under a distribution)
            assert len(got) == len(expected)
            for a, b in zip(got, expected):
                np.testing.assert_array_equal(a, b)


def test_custom_loop_tracker_restores_best(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    _run("loop", run, out)
    info = _json(out, "loop0.json")
    assert info["best_epoch"] == 3 and "model" in info["sharding"]
    assert _saves(run) == ["best-004", "best-005"]  # the two best scores (1.0, 1.5)
    epochs, restored = np.load(out / "epochs0.npz"), np.load(out / "restored0.npz")
    for a, b in zip(_weights(restored, "arr_"), _weights(epochs, "e3_")):
        np.testing.assert_array_equal(a, b)


def test_sharded_model_refuses_a_weights_file(tmp_path):
    script = (
        "import keras, sys; sys.path.insert(0, '.');"
        "from tests.workers.orbax_worker import build_model, distribution;"
        "from keras_best import BestWeightsTracker;"
        "keras.distribution.set_distribution(distribution('1x4'));"
        f"BestWeightsTracker(build_model(), {str(tmp_path / 'best.weights.h5')!r})"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_env(4), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert 'save_format="orbax"' in proc.stderr and "gather every variable on one host" in proc.stderr


@pytest.mark.slow
def test_two_processes_custom_loop(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    port = str(free_ports(1)[0])
    logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
    run_all([[sys.executable, WORKER, "loop", str(run), str(out), "1x4", str(i), port, "2"] for i in range(2)],
            logs, _env(2), timeout=240)
    for i in range(2):
        info = _json(out, f"loop{i}.json")
        assert info["best_epoch"] == 3
        epochs, restored = np.load(out / f"epochs{i}.npz"), np.load(out / f"restored{i}.npz")
        for a, b in zip(_weights(restored, "arr_"), _weights(epochs, "e3_")):
            np.testing.assert_array_equal(a, b)
    assert _saves(run) == ["best-004", "best-005"]  # the two best scores (1.0, 1.5)
    assert os.listdir(run / "best-004" / "0" / "pytree")  # both processes' shards, one checkpoint
    _run("load", run, out, mesh="none", devices=1)  # onto one device, in one process
    loaded = np.load(out / "load0.npz")
    for a, b in zip(_weights(loaded, "best_"), _weights(np.load(out / "epochs0.npz"), "e3_")):
        np.testing.assert_array_equal(a, b)


def _pair(mode: str, run, out, logs: list[str], timeout: float = 240, **env: str) -> list[tuple[int, float]]:
    """Run `mode` in 2 processes x 2 devices; (exit code, seconds to exit) of each, whatever they exit with."""
    port, start = str(free_ports(1)[0]), time.monotonic()
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, WORKER, mode, str(run), str(out), "1x4", str(i), port, "2"],
                                          stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                          env=dict(_env(2, **env), PYTHONFAULTHANDLER="1")))
    ends = [None, None]
    while None in ends and time.monotonic() - start < timeout:
        for i, p in enumerate(procs):
            if ends[i] is None and p.poll() is not None:
                ends[i] = time.monotonic() - start
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return [(p.returncode, end) for p, end in zip(procs, ends)]


def _tails(logs) -> str:
    return "\n".join(f"--- {log}\n" + open(log).read()[-3000:] for log in logs)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The model-parallel jobs of 2 processes x 2 devices, run once per module (see the tests)."""
    root = shared_root(tmp_path_factory, "orbax-pair")

    def make(root):
        (root / "out").mkdir()
        jobs, quick = {}, dict(HEARTBEAT_S="10", KERAS_BEST_ORBAX_TIMEOUT_S="15")
        # A non-chief killed mid-save, then the chief (process 0: it holds JAX's coordination service and
        # commits keras_best.json), each in its own run directory, each followed by a restart of both.
        for name, mode, run, env in (
                ("resume", "resume", "run", {}),
                ("kill", "kill", "killed", dict(quick, KILL_AT="1", KILL_INDEX="1")),
                ("restart", "kill", "killed", quick),
                ("killchief", "kill", "killed_chief", dict(quick, KILL_AT="1", KILL_INDEX="0")),
                ("restartchief", "kill", "killed_chief", quick)):
            logs = [str(root / f"{name}{i}.log") for i in range(2)]
            jobs[name] = {"exits": _pair(mode, root / run, root / "out", logs, **env), "logs": logs}
            if not name.startswith("kill"):
                assert [code for code, _ in jobs[name]["exits"]] == [0, 0], _tails(logs)
            if name.startswith("restart"):
                for i in range(2):  # each restart's results under its own name
                    (root / "out" / f"kill{i}.json").rename(root / "out" / f"{name}{i}.json")
            if name.startswith("kill"):  # the best it left, loaded in one process before the restart
                _run("load", root / run, root / "out", mesh="none", devices=1)
                for f in ("epochs.npz", "load0.npz", "load0.json"):
                    (root / "out" / f).rename(root / "out" / f"{name}_{f}")
        (root / "jobs.json").write_text(json.dumps(jobs))

    run_once(root, make)
    return root, json.loads((root / "jobs.json").read_text())


@pytest.mark.slow
def test_two_processes_resume_continues_exactly_with_keep_last(pair):
    root, _ = pair
    for i in range(2):
        info = _json(root / "out", f"resume{i}.json")
        assert info["cut"]["initial_epochs"] == [0, 2]  # the second model went on after epoch 2
        assert info["cut"]["losses"] == info["full"]["losses"]
        final = np.load(root / "out" / f"resume{i}.npz")
        for k in range(len(final.files) // 2):
            np.testing.assert_array_equal(final[f"cut_{k}"], final[f"full_{k}"])  # exactly the same weights
    cut = root / "run" / "cut"
    states = sorted(n for n in os.listdir(cut) if n.startswith("keras_best_state-"))
    assert states == ["keras_best_state-0002.orbax", "keras_best_state-0003.orbax"]  # keep_last=2
    for name in states:  # each process's shards in one Orbax step; the host side written by the chief
        assert sorted(os.listdir(cut / name)) == ["0", "host.h5"]
    assert json.loads((cut / "keras_best.json").read_text())["last"]["path"] == states[-1]
    # fit() with BestCheckpoint across the processes kept the two best epochs (the last two: the loss
    # falls), each one Orbax checkpoint of both processes' shards; the best loads here, on one device.
    from keras_best import load_best
    from tests.workers.orbax_worker import build_model

    assert _saves(root / "run" / "full") == ["best-003", "best-004"]
    model = build_model()
    assert load_best(model, str(root / "run" / "full")).epoch == 3
    final = np.load(root / "out" / "resume0.npz")
    for k, w in enumerate(model.get_weights()):
        np.testing.assert_array_equal(w, final[f"full_{k}"])


@pytest.mark.slow
@pytest.mark.parametrize("killed_index", [1, 0])
def test_a_dead_peer_ends_the_survivor_and_both_resume(pair, killed_index):
    """A SIGKILL of one process mid-save, a worker (1) or the chief (0, which commits the record and holds
    JAX's coordination service): the survivor ends with an error, the previous best loads, both resume."""
    root, jobs = pair
    kill, run = ("kill", "killed") if killed_index else ("killchief", "killed_chief")
    (killed, died), (survivor, ended) = jobs[kill]["exits"][killed_index], jobs[kill]["exits"][1 - killed_index]
    assert killed == -9, _tails(jobs[kill]["logs"])
    assert survivor != 0 and ended - died < 60, jobs[kill]["exits"]  # no hang: heartbeat 10 s, Orbax 15 s
    if killed_index:  # the chief says which process stopped answering
        assert "heartbeat" in open(jobs[kill]["logs"][0]).read()
    best = _json(root / "out", f"{kill}_load0.json")["best_epoch"]
    assert best == 0  # the save of epoch 1 was interrupted: never recorded; the best before loads
    for a, b in zip(_weights(np.load(root / "out" / f"{kill}_load0.npz"), "best_"),
                    _weights(np.load(root / "out" / f"{kill}_epochs.npz"), "e0_")):
        np.testing.assert_array_equal(a, b)
    full = _json(root / "out", "resume0.json")["full"]["losses"]
    restart = "restart" if killed_index else "restartchief"
    for i in range(2):  # both restarted with resume=True: on from the last complete state, exactly
        info = _json(root / "out", f"{restart}{i}.json")
        assert info["initial_epoch"] == 1 and info["losses"] == full[1:]
    final = np.load(root / "out" / "resume0.npz")
    for k, w in enumerate(_weights(np.load(root / "out" / "epochs0.npz"), "e3_")):
        np.testing.assert_array_equal(w, final[f"full_{k}"])
    assert not [n for n in os.listdir(root / run) if "tmp" in n]


@pytest.mark.slow
def test_sigkill_mid_save_keeps_previous_best_and_resumes(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    out.mkdir()
    proc = _run("kill", run, out, check=False, KILL_AT="2")
    assert proc.returncode == -9, proc.stderr[-3000:]
    record = json.loads((run / "keras_best.json").read_text())
    best = record["best"]["epoch"]
    assert best in (0, 1)  # the save of epoch 3 was not recorded
    epochs = np.load(out / "epochs.npz")
    _run("load", run, out, mesh="none", devices=1)
    for a, b in zip(_weights(np.load(out / "load0.npz"), "best_"), _weights(epochs, f"e{best}_")):
        np.testing.assert_array_equal(a, b)
    _run("kill", run, out, mesh="2x2")  # resume=True on another mesh, no kill this time (KILL_AT unset)
    assert _json(out, "kill0.json")["initial_epoch"] == 2
    assert sorted(os.listdir(run / "keras_best_last.orbax")) == ["0", "host.h5"]  # the state, through Orbax
    assert not [n for n in os.listdir(run) if "tmp" in n]  # the interrupted save's leftovers are gone


def test_a_plain_run_directory_with_save_format_orbax_names_its_saves(tmp_path):
    # As keras.callbacks.OrbaxCheckpoint(directory): the filepath is the run directory, keras-best names
    # each kept best (an Orbax checkpoint directory) in it. One device, in this process.
    import keras

    from keras_best import BestCheckpoint, BestWeightsTracker, load_best
    from tests.workers.orbax_worker import build_model, data

    run = tmp_path / "run"
    model, rng, saved = build_model(), np.random.default_rng(3), {}
    tracker = BestWeightsTracker(model, str(run), save_format="orbax", verbose=0)
    for epoch, score in enumerate([2.0, 1.0, 1.5]):
        for v in model.weights:
            v.assign(rng.normal(size=v.shape).astype("float32"))
        saved[epoch] = [np.array(w) for w in model.get_weights()]
        tracker.update(epoch, {"val_loss": score})
    tracker.finish()
    assert _saves(run) == ["best-002"] and tracker.best_path == str(run / "best-002")  # top-1, named for us
    assert json.loads((run / "keras_best.json").read_text())["save_format"] == "orbax"
    stock = keras.models.load_model(str(run / "best-002"))  # Keras's own loader reads a kept save
    again = build_model()
    assert load_best(again, str(run)).epoch == 1
    for restored in (stock, again):
        for a, b in zip(restored.get_weights(), saved[1]):
            np.testing.assert_array_equal(a, b)
    fit_run = tmp_path / "fit"
    x, y = data()
    build_model().fit(x, y, epochs=2, verbose=0, callbacks=[
        BestCheckpoint(str(fit_run), monitor="loss", save_format="orbax")])
    assert len(_saves(fit_run)) == 1 and _saves(fit_run)[0] in ("best-001", "best-002")
    # Inferred from a name without an extension (no save_format), the filepath still names the save itself.
    build_model().fit(x, y, epochs=1, verbose=0, callbacks=[
        BestCheckpoint(str(tmp_path / "named" / "best"), monitor="loss")])
    assert os.listdir(tmp_path / "named" / "best") == ["0"]


def test_training_state_through_orbax_resumes_exactly_and_a_damaged_one_changes_nothing(tmp_path):
    # One device, in this process: the state's format (an Orbax step for the variables, host.h5 for the rest).
    from keras_best import BestCheckpoint
    from keras_best.storage.files import DamagedFileError
    from tests.workers.orbax_worker import build_model, data

    x, y = data()

    def fit(run, epochs, model=None):
        model = model or build_model()
        callback = BestCheckpoint(str(run), monitor="loss", save_format="orbax", keep_last=2, resume=True, verbose=0)
        losses = model.fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback]).history["loss"]
        return model, losses, callback.tracker._run.initial_epoch

    full, losses, _ = fit(tmp_path / "full", 4)
    fit(tmp_path / "cut", 2)
    cut, rest, initial = fit(tmp_path / "cut", 4)  # a new model and optimizer, on from epoch 2
    assert initial == 2 and rest == losses[2:]
    for a, b in zip(cut.get_weights() + [np.asarray(v.value) for v in cut.optimizer.variables],
                    full.get_weights() + [np.asarray(v.value) for v in full.optimizer.variables]):
        np.testing.assert_array_equal(a, b)
    states = sorted(n for n in os.listdir(tmp_path / "cut") if n.startswith("keras_best_state-"))
    assert states == ["keras_best_state-0002.orbax", "keras_best_state-0003.orbax"]
    assert sorted(os.listdir(tmp_path / "cut" / states[-1])) == ["0", "host.h5"]
    # The newest state's host side lost: resuming refuses, and assigns nothing to the model.
    os.remove(tmp_path / "cut" / states[-1] / "host.h5")
    model = build_model()
    before = model.get_weights()
    with pytest.raises(DamagedFileError, match="damaged or incomplete"):
        fit(tmp_path / "cut", 6, model)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_saves_write_arrays_uncompressed(tmp_path):
    # Orbax compresses by default (ZSTD): its compressed copies cost host memory beside the save's own
    # and CPU beside training. Zeros compress to almost nothing, so a save of zeros as large as the
    # weights shows they were written as they are; Keras's own loader still reads it.
    import keras

    from keras_best import BestWeightsTracker

    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(512, kernel_initializer="zeros")])
    model.compile("sgd", "mse")
    tracker = BestWeightsTracker(model, str(tmp_path / "run"), save_format="orbax", verbose=0)
    tracker.update(0, {"val_loss": 1.0})
    tracker.finish()
    saved = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tracker.best_path) for f in fs)
    assert saved >= 256 * 512 * 4, saved
    restored = keras.models.load_model(tracker.best_path)
    np.testing.assert_array_equal(restored.get_weights()[0], np.zeros((256, 512), "float32"))


def test_a_save_superseded_while_the_disk_is_behind_leaves_no_temp_directory(tmp_path, monkeypatch):
    # Every process starts its Orbax save in the training thread, so a newer best cannot drop the
    # waiting one's write (the writer would never finish or remove its temp directory): the update
    # waits for it instead, and the run directory holds the newest best only.
    import threading

    import keras

    from keras_best import BestWeightsTracker
    from keras_best.storage import writer

    commit, gate = writer.commit, threading.Event()

    def slow_commit(*args, **kwargs):  # the first commit waits: the next saves queue behind it
        gate.wait(timeout=30)
        commit(*args, **kwargs)

    monkeypatch.setattr(writer, "commit", slow_commit)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile("sgd", "mse")
    tracker = BestWeightsTracker(model, str(tmp_path / "run"), save_format="orbax", verbose=0)
    for epoch in range(4):
        if epoch == 2:
            threading.Timer(0.5, gate.set).start()  # the disk catches up while the later updates wait
        model.set_weights([w + 1.0 for w in model.get_weights()])
        tracker.update(epoch, {"val_loss": 1.0 / (epoch + 1)})
    tracker.finish()
    assert sorted(os.listdir(tmp_path / "run")) == sorted(["best-004", "keras_best.json",
                                                           "keras_best_history.jsonl"])
