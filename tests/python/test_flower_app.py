"""examples/flower_app with `flwr run`: on Flower's simulation engine and on
the deployment engine (a SuperLink and 2 SuperNodes on 127.0.0.1, insecure).

Each test starts its own Flower processes (free ports, FLWR_HOME in a
temporary directory, so nothing is shared with other runs on the machine),
submits the app with `flwr run <app> <connection> --stream`, waits for the
ServerApp's history file and checks 2 rounds ran and the server-side
validation perplexity fell. The processes are stopped (their process groups,
SIGTERM then SIGKILL) whatever happens. The apps import libmop from this
tree (PYTHONPATH, LIBMOP_LIBRARY) as an installed package would be found.
About a minute each on 2 cores (SmolLM2, 6 examples per task, 1 local step).
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("flwr", reason="flwr not installed: pip install -r scripts/requirements-dev.txt")

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "flower_app"
BIN = pathlib.Path(sys.executable).parent
CORPUS = "/usr/share/wordnet/data.noun"  # the dataset builder's corpora (scripts/setup.sh)
needs_corpus = pytest.mark.skipif(not os.path.exists(CORPUS), reason="corpus packages not installed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("flowerapp-data")
    subprocess.run([sys.executable, str(ROOT / "examples/data/build_dataset.py"), "--out", str(out),
                    "--per-task", "6", "--seed", "0"], check=True, capture_output=True, timeout=300)
    return out


class Flower:
    """Flower processes for one test, stopped by close()."""

    def __init__(self, tmp, build_dir, model_path):
        self.tmp = tmp
        self.home = tmp / "flwr-home"
        self.home.mkdir()
        self.env = dict(os.environ, FLWR_HOME=str(self.home), FLWR_TELEMETRY_ENABLED="0",
                        RAY_USAGE_STATS_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                        MOP_TEST_MODEL=model_path, PYTHONPATH=str(ROOT / "bindings" / "python"),
                        LIBMOP_LIBRARY=str(pathlib.Path(build_dir) / "libmop.so"),
                        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        self.procs = []

    def start(self, name, *args):
        log = open(self.tmp / f"{name}.log", "wb")
        p = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=self.env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p, log))
        return p

    def logs(self):
        return "\n".join(f"--- {n}\n" + (self.tmp / f"{n}.log").read_text(errors="replace")[-3000:]
                         for n, _, _ in self.procs)

    def connection(self, address, options=""):
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "{address}"\n'
            f"insecure = true\n{options}")

    def wait_port(self, port, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for _, p, _ in self.procs:
                assert p.poll() is None, self.logs()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise AssertionError(f"port {port} not open after {timeout}s\n" + self.logs())

    def run(self, rounds, data, history, timeout=480):
        cfg = (f'num-server-rounds={rounds} data-dir="{data}" history="{history}" '
               "local-steps=1 batch-size=2 max-len=64 threads=1 n-experts=4 prompt-len=4 "
               "ratio=2.0 lr=0.01")
        r = subprocess.run([str(BIN / "flwr"), "run", str(APP), "test", "--stream",
                            "--run-config", cfg], env=self.env, capture_output=True, text=True,
                           timeout=timeout, cwd=self.tmp)
        end = time.monotonic() + 60   # --stream may return as the run is marked finished
        while not history.exists() and time.monotonic() < end:
            time.sleep(0.5)
        assert history.exists(), (r.stdout[-4000:] + r.stderr[-3000:] + self.logs())
        return json.loads(history.read_text()), r.stdout + r.stderr

    def close(self):
        for _, p, log in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _, p, log in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=15)
            log.close()


@pytest.fixture
def flower(tmp_path, build_dir, model_path):
    f = Flower(tmp_path, build_dir, model_path)
    yield f
    f.close()


def check(hist, out):
    rounds = hist["rounds"]
    assert [h["round"] for h in rounds] == [1, 2], out[-3000:]
    assert all(h["n_clients"] == 2 for h in rounds)
    ppl = [hist["initial_val_ppl"]] + [h["val_ppl"] for h in rounds]
    print("validation perplexity by round:", ppl)
    assert ppl[-1] < ppl[0], ppl


def start_superlink(flower, *extra):
    """A SuperLink on one free port (Flower 1.42 serves its Control, Fleet and
    Runtime APIs over HTTP on one --host/--port)."""
    port = free_port()
    # the apps run in this venv (libmop from PYTHONPATH), not in one uv builds per run
    flower.start("superlink", "flower-superlink", "--insecure", *extra,
                 "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                 "--port", str(port), "--database", ":flwr-in-memory:")
    flower.wait_port(port)
    return port


@needs_corpus
def test_flwr_run_simulation(flower, data, tmp_path):
    port = start_superlink(flower, "--simulation")
    flower.connection(f"127.0.0.1:{port}",
                      "options.num-supernodes = 2\n"
                      "options.backend.client-resources.num-cpus = 1\n"
                      "options.backend.init-args.num-cpus = 1\n")
    hist, out = flower.run(2, data, tmp_path / "history.json")
    check(hist, out)


@needs_corpus
def test_flwr_run_deployment(flower, data, tmp_path):
    port = start_superlink(flower)
    for i in range(2):
        flower.start(f"supernode{i}", "flower-supernode", "--insecure",
                     "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                     "--port", str(free_port()),
                     "--node-config", f"partition-id={i} num-partitions=2")
    flower.connection(f"127.0.0.1:{port}")
    hist, out = flower.run(2, data, tmp_path / "history.json")
    check(hist, out)


def test_flwr_cli_runs():
    """`flwr --help` works in this venv (typer/click versions that agree)."""
    r = subprocess.run([str(BIN / "flwr"), "--help"], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, FLWR_DISABLE_UPDATE_CHECK="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert " run " in r.stdout and " new " in r.stdout
