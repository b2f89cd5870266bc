"""What a durable save costs on S3 next to the store's own upload.

Starts moto's S3 server (a real S3 API server) on 127.0.0.1 and saves a
~50 MB model (Dense layers, float32) there, `--saves` times each way:

- put_file    s3fs `put_file` of the same `.weights.h5` file (the durable
              save's, downloaded): the store's own upload, the floor.
- durable     `BestWeightsTracker(..., "s3://.../best.weights.h5")`, every
              update a new best: snapshot, local file, upload under a temp
              name, journaled record, copy to the final name. The time of one
              `update()` with `async_save=False` (the whole durable save), and
              the time until the record names it (polled by another client):
              from then on the save is durable and `load_best` returns it; the
              copy into the fixed name follows.
- new names   the same with `e{epoch:03d}.weights.h5` (`keep_top_k=1`): a
              name the record does not name yet is uploaded straight to it
              (announced in a marker first), no copy.
- resume      the same with `resume=True`: the weights and the training state
              (the model and SGD's step count, ~1x the bytes) at every update.

and the requests one update sends to the server (counted by the server):
a save, a save with `resume=True`, and an update that saves nothing (history
and record only), with the listings among them. Median over the saves; then
durable / put_file (goal: <= 1.3).

`--baseline DIR` runs the same in a subprocess with the keras-best of
another checkout (e.g. the main branch) and prints both.

Usage: python benchmarks/s3_save.py [--mb 50] [--saves 5] [--baseline /path/to/other/checkout]
Needs moto[server], s3fs and boto3 (the `test` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHER = "kb-benchmark-watcher"  # the user agent of the record's poller, whose requests are not counted


class Server:
    """moto's S3 server in a thread, counting the requests it answers."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"})
        self.requests: list[tuple[str, str]] = []
        wsgi = self._server._server  # noqa: SLF001 - moto's werkzeug server: count what it serves
        app, lock = wsgi.app, threading.Lock()

        def counting(environ, start_response):
            if WATCHER in environ.get("HTTP_USER_AGENT", ""):
                return app(environ, start_response)  # the benchmark's own polling: not counted
            with lock:
                self.requests.append((environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")))
            return app(environ, start_response)

        wsgi.app = counting

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3").create_bucket(Bucket=name)
        return f"s3://{name}"

    def count(self) -> dict[str, int]:
        """Requests since the last call: all, and the listings among them."""
        got, self.requests = self.requests, []
        return {"requests": len(got), "listings": sum("list-type" in q for _, q in got)}

    def stop(self) -> None:
        self._server.stop()


class Watcher:
    """Polls a run's record (its own client) for the time it first names `epoch` as the best.

    From then on the save is durable: `load_best` returns it, and a kill leaves it (a pending rename
    is rolled forward by the next start). Its GETs are left out of the server's counts.
    """

    def __init__(self, client, key: str, epoch: int, start: float) -> None:
        self._client, self._key, self._epoch, self._start = client, key, epoch, start
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        bucket, key = self._key.split("/", 1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                body = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
                if json.loads(body)["best"]["epoch"] == self._epoch:
                    self.seconds = time.perf_counter() - self._start
                    return
            except Exception:  # noqa: BLE001 - not written yet
                pass
            time.sleep(0.01)

    def wait(self) -> float:
        self._thread.join()
        assert self.seconds is not None, f"the record never named epoch {self._epoch}"
        return self.seconds


def build(mb: int):
    import keras

    width = int((mb * 2**20 / 4 / 2) ** 0.5)  # two square Dense layers
    model = keras.Sequential([keras.Input((width,)), keras.layers.Dense(width), keras.layers.Dense(width)])
    model.compile(optimizer="sgd", loss="mse")  # no slots: the weights file is the model's size
    model.optimizer.build(model.trainable_variables)
    return model


def measure(mb: int, saves: int, code: str) -> dict:
    sys.path.insert(0, code)
    import boto3
    import fsspec
    from botocore.config import Config

    from keras_best import BestWeightsTracker

    server = Server()
    client = boto3.client("s3", config=Config(user_agent_extra=WATCHER))
    model = build(mb)
    out: dict = {"code": code, "mb": sum(v.numpy().nbytes for v in model.weights) / 1e6}
    try:
        for way, name, resume in (("durable", "best.weights.h5", False), ("new", "e{epoch:03d}.weights.h5", False),
                                  ("resume", "best.weights.h5", True)):
            tracker = BestWeightsTracker(model, server.bucket(way) + "/run/" + name, resume=resume,
                                         keep_top_k=1, async_save=False, verbose=0)
            times, counts, recorded = [], [], []
            for epoch in range(saves):
                server.count()
                start = time.perf_counter()
                watcher = Watcher(client, f"{way}/run/keras_best.json", epoch, start)
                tracker.update(epoch, {"val_loss": 1.0 / (epoch + 1)})
                times.append(time.perf_counter() - start)
                recorded.append(watcher.wait())
                counts.append(server.count())
            out[f"{way}_recorded_s"] = statistics.median(recorded)
            server.count()
            tracker.update(saves, {"val_loss": 10.0})  # no save: the history and the record
            out[f"{way}_nosave"] = server.count()
            tracker.finish()
            out[f"{way}_s"] = statistics.median(times)
            out[f"{way}_requests"] = counts[-1]
        fs, _ = fsspec.core.url_to_fs("s3://durable")
        with tempfile.TemporaryDirectory() as scratch:  # the very bytes of the durable save, uploaded plainly
            local = os.path.join(scratch, "plain.weights.h5")
            fs.get_file("s3://durable/run/best.weights.h5", local)
            out["file_mb"] = os.path.getsize(local) / 1e6
            server.bucket("plain")
            times = []
            for i in range(saves):
                start = time.perf_counter()
                fs.put_file(local, f"s3://plain/w{i}.weights.h5")
                times.append(time.perf_counter() - start)
            out["put_file_s"] = statistics.median(times)
    finally:
        server.stop()
    return out


def show(r: dict) -> None:
    print(f"keras-best from {r['code']}: model {r['mb']:.0f} MB, file {r['file_mb']:.0f} MB")
    print(f"  put_file (s3fs)               {r['put_file_s']:6.2f} s")
    print(f"  durable save (.weights.h5)    {r['durable_s']:6.2f} s   ratio vs put_file {r['durable_s'] / r['put_file_s']:.2f}")
    print(f"    of which until the record names it (loadable, kill-safe) "
          f"{r['durable_recorded_s']:6.2f} s   ratio {r['durable_recorded_s'] / r['put_file_s']:.2f}")
    print(f"  durable save, new names       {r['new_s']:6.2f} s   ratio vs put_file {r['new_s'] / r['put_file_s']:.2f}")
    print(f"  save with resume=True         {r['resume_s']:6.2f} s   ratio vs put_file {r['resume_s'] / r['put_file_s']:.2f}")
    for key, what in (("durable_requests", "a save"), ("new_requests", "a save, new names"),
                      ("resume_requests", "a save, resume=True"),
                      ("durable_nosave", "no save"), ("resume_nosave", "no save, resume=True")):
        print(f"  requests per update, {what:22s} {r[key]['requests']:3d} ({r[key]['listings']} listings)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--code", default=HERE, help="the checkout whose keras_best is measured")
    parser.add_argument("--baseline", help="another checkout, measured the same way in a subprocess")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        cmd = [sys.executable, os.path.abspath(__file__), "--mb", str(args.mb), "--saves", str(args.saves),
               "--code", args.baseline, "--json"]
        baseline = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        show(baseline)
    result = measure(args.mb, args.saves, os.path.abspath(args.code))
    if args.json:
        print(json.dumps(result))
        return
    show(result)


if __name__ == "__main__":
    main()
