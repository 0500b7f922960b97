"""Hostile cases for the commands that write output folders (demo, synth, train) and for
training run folders: a folder the command did not create, unwritable and full outputs,
out-of-range demo sizes, restarts, resumes with another recipe or another model's checkpoint.

Each case asserts what a user would see: no traceback, the exit code, one error line, and
that nothing outside the command's own output changed (see conftest.py). Disk-full is
simulated with RLIMIT_FSIZE: a write past the limit fails with EFBIG in C code too (the
bag writers, torch.save, safetensors), as one past the end of a full disk fails with ENOSPC.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from flowclas_ros.errors import UserError
from flowclas_ros.files import atomic_write
from flowclas_ros.training.config import load_train_config
from flowclas_ros.training.run_folder import save_checkpoint
from flowclas_ros.training.trainer import Trainer

from .conftest import expect_refused

ROOT_USER = os.geteuid() == 0  # permissions do not stop root


@contextmanager
def file_size_limit(nbytes: int):
    """Writes that grow a file past ``nbytes`` fail (EFBIG), as on a full disk."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def temporaries(root: Path) -> list[str]:
    """Temporary files of atomic writes left anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp*"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny synthetic folder dataset with outlier sources (outside every case's tmp_path)."""
    from flowclas_ros.synthetic.generate import SynthOptions, synthesize

    root = tmp_path_factory.mktemp("data") / "synthetic"
    synthesize(SynthOptions(output=str(root), train=8, test=0, outliers=3, height=64, width=96))
    return root


RECIPE = """
model:
  encoder: {name: efficientnet_lite0, layers: [2, 4], weights: null, input_size: [64, 96]}
  flow: {steps: 2, hidden_ratio: 0.5}
  projection_dim: 16
"""


def write_recipe(folder: Path, dataset: Path, **optim) -> Path:
    """A recipe that trains the smallest model in a couple of seconds."""
    recipe = {
        **yaml.safe_load(RECIPE),
        "data": {"dataset": "folder", "root": str(dataset), "outliers": str(dataset / "outliers"), "val_fraction": 0.25},
        "optim": {"lr": 1e-3, "batch_size": 2, "steps": 2, "precision": "fp32", "warmup": 0.5, **optim},
        "run": {"log_every": 1, "val_every": 1, "checkpoint_every": 1, "bins": 100},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset) -> Path:
    """A finished two-step run folder (checkpoints, best.pt, logs, bundle), copied by the cases."""
    folder = tmp_path_factory.mktemp("finished")
    recipe = write_recipe(folder, dataset)
    Trainer(load_train_config(recipe), folder / "run", progress=False).run()
    assert (folder / "run" / "checkpoints" / "best.pt").is_file()
    return folder


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    return tmp_path / "recipe.yaml"


def logged_steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def command(name: str, output: str, recipe: Path | None = None) -> list[str]:
    """The fastest argv of ``name`` writing to ``output``."""
    if name == "demo":
        return ["demo", "--output", output, "--frames", "2"]
    if name == "synth":
        return ["synth", "--output", output, "--train", "1", "--test", "1", "--outliers", "1",
                "--height", "32", "--width", "32"]
    return ["train", "--config", str(recipe), "--output", output, "--preview", "0"]


COMMANDS = ("demo", "synth", "train")


# -- an output folder the command did not create: refused, nothing of the user's touched --------

@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("where", ["working-directory", "non-empty-folder", "file"])
def test_foreign_output_is_refused(flowclas, tmp_path, dataset, name, where):
    recipe = write_recipe(tmp_path, dataset)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("keep me")
    output = {"working-directory": ".", "non-empty-folder": "mine", "file": "notes.txt"}[where]
    outcome = flowclas(*command(name, output, recipe))
    expect_refused(outcome, output, "is a file" if where == "file" else "did not create")


@pytest.mark.parametrize("name", COMMANDS)
def test_output_under_a_file_is_refused(flowclas, tmp_path, dataset, name):
    recipe = write_recipe(tmp_path, dataset)
    (tmp_path / "notes.txt").write_text("keep me")
    expect_refused(flowclas(*command(name, "notes.txt/out", recipe)), "notes.txt is a file")


@pytest.mark.skipif(ROOT_USER, reason="root writes into read-only folders")
@pytest.mark.parametrize("name", COMMANDS)
def test_read_only_output_is_refused(flowclas, tmp_path, dataset, name):
    recipe = write_recipe(tmp_path, dataset)
    (tmp_path / "locked").mkdir(mode=0o500)
    try:
        expect_refused(flowclas(*command(name, "locked/out", recipe)), "permission denied")
    finally:
        (tmp_path / "locked").chmod(0o700)


# -- a folder the command did create is reused; only what it wrote is replaced ----------------

def test_demo_reuses_its_own_folder_and_keeps_other_files(flowclas, tmp_path):
    argv = ["demo", "--output", "demo", "--frames", "3", "--seed", "2", "--montage-frames", "1"]
    (tmp_path / "demo").mkdir()  # an empty folder is adopted
    first = flowclas(*argv, outputs=["demo"])
    assert first.code == 0, first.stderr
    assert (tmp_path / "demo" / ".flowclas-demo").is_file()
    (tmp_path / "demo" / "notes.txt").write_text("mine")
    again = flowclas(*argv, outputs=["demo/camera_bag", "demo/replay", "demo/montage.png"])
    assert again.code == 0, again.stderr
    assert (tmp_path / "demo" / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "demo" / "replay" / "metrics.json").read_text())["num_images"] == 3


def test_synth_replaces_its_own_dataset_without_stale_images(flowclas, tmp_path):
    argv = command("synth", "data")
    assert flowclas(*argv[:4], "3", *argv[5:], outputs=["data"]).code == 0
    (tmp_path / "data" / "notes.txt").write_text("mine")
    assert flowclas(*argv, outputs=["data/train", "data/test", "data/outliers", "data/preview.png",
                                    "data/synth.json"]).code == 0
    assert len(list((tmp_path / "data" / "train" / "images").iterdir())) == 1  # no stale images of the first run
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"


# -- demo sizes: refused before anything is written, or run ------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--frames", "0"], "--frames"), (["--frames", "-3"], "--frames"), (["--frames", "10001"], "--frames"),
    (["--montage-frames", "0"], "--montage-frames"), (["--montage-frames", "-1"], "--montage-frames"),
    (["--montage-frames", "17"], "--montage-frames"), (["--seed", "-1"], "--seed"),
])
def test_demo_sizes_out_of_range(flowclas, flags, needle):
    expect_refused(flowclas("demo", "--output", "demo", *flags), needle)


def test_demo_frames_without_an_anomaly(flowclas):
    # two frames of seed 1 show no anomaly: nothing to measure, said in one line
    expect_refused(flowclas("demo", "--output", "demo", "--frames", "2", "--seed", "1", outputs=["demo"]),
                   "no", "anomaly", "--frames")


# -- a full disk: one line, no temporary file left ------------------------------------------------

@pytest.mark.parametrize("name, limit", [("demo", 64 << 10), ("synth", 512), ("train", 24 << 10)])
def test_full_disk(flowclas, tmp_path, dataset, name, limit):
    recipe = write_recipe(tmp_path, dataset)
    with file_size_limit(limit):
        outcome = flowclas(*command(name, "out", recipe), outputs=["out"])
    expect_refused(outcome, "out", "too large")
    assert not temporaries(tmp_path / "out")


def test_full_disk_checkpoint_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"version": 1, "step": 1}, path)
    before = path.read_bytes()
    with file_size_limit(16 << 10), pytest.raises(OSError) as raised:
        save_checkpoint({"version": 1, "model": {"w": torch.zeros(100_000)}}, path)
    assert raised.value.errno == errno.EFBIG and raised.value.filename == str(path)
    assert path.read_bytes() == before and not temporaries(tmp_path)


def test_full_disk_bundle_write(tmp_path):
    from flowclas_ros.model import FlowCLASNet, save_bundle
    from flowclas_ros.model.config import ModelConfig

    net = FlowCLASNet(ModelConfig.from_dict(yaml.safe_load(RECIPE)["model"]))
    with file_size_limit(16 << 10), pytest.raises(OSError) as raised:
        save_bundle(net, tmp_path / "model")
    assert raised.value.errno == errno.EFBIG and "weights.safetensors" in raised.value.filename
    assert not temporaries(tmp_path)


def test_atomic_write_removes_its_temporary_on_enospc(tmp_path):
    def fill(tmp: Path) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "file").write_text("old")
    with pytest.raises(OSError):
        atomic_write(tmp_path / "file", fill)
    assert (tmp_path / "file").read_text() == "old" and not temporaries(tmp_path)


# -- training run folders ---------------------------------------------------------------------

def test_restart_drops_the_old_best_and_logs(flowclas, tmp_path, finished_run):
    copy_run(finished_run, tmp_path)
    # the new run validates nothing (no outliers): the old best.pt must not become its bundle
    recipe = tmp_path / "plain.yaml"
    plain = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    plain["data"]["outliers"], plain["objective"] = None, {"name": "ml"}
    recipe.write_text(yaml.safe_dump(plain))
    (tmp_path / "run" / "notes.txt").write_text("mine")
    outcome = flowclas("train", "--config", recipe, "--output", "run", "--preview", "0", "--restart", outputs=["run"])
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["model"]["training"]["best_step"] == -1
    assert logged_steps(tmp_path / "run" / "logs" / "train.csv") == [1, 2]
    assert not (tmp_path / "run" / "logs" / "val.csv").exists() or not logged_steps(tmp_path / "run" / "logs" / "val.csv")


@pytest.mark.parametrize("change", ["optim.lr=0.002", "model.projection_dim=8", "data.root=elsewhere"])
def test_resume_with_another_recipe_is_refused(flowclas, tmp_path, finished_run, change):
    recipe = copy_run(finished_run, tmp_path)
    outcome = flowclas("train", "--config", recipe, "--output", "run", "--preview", "0", "--set", change)
    expect_refused(outcome, "another recipe", change.split("=")[0], "--restart")


def _foreign(path: Path) -> None:
    """A checkpoint of a model with other tensors than the recipe's."""
    state = torch.load(path, weights_only=True)
    state["model"] = {"encoder.stem.weight": torch.zeros(3, 3), **{k: v[..., :1] for k, v in list(state["model"].items())[:3]}}
    torch.save(state, path)


def test_fp16_on_cpu_is_refused(flowclas, tmp_path, dataset):
    # (with --devices 2 the parent of the spawned processes says the same line; 45 s here, so not run)
    recipe = write_recipe(tmp_path, dataset, precision="fp16")
    outcome = flowclas("train", "--config", recipe, "--output", "run", "--preview", "0", "--device", "cpu",
                       outputs=["run"])
    expect_refused(outcome, "fp16", "cuda")


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("damage, needle", [
    (_foreign, "another model"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "cannot read checkpoint"),
    (lambda p: torch.save({"version": 1, "model": {}, "step": 99, "best": {}}, p), "not a checkpoint of this recipe"),
    (lambda p: torch.save({"version": 7, "model": {}}, p), "not a flowclas training checkpoint"),
    (lambda p: torch.save({"version": 1, "model": Evil()}, p), "cannot read checkpoint"),
    (lambda p: (p.parent.parent / "config.yaml").unlink(), "recipe"),
], ids=["another-model", "garbage", "step-beyond-recipe", "other-version", "pickled-code", "no-recipe-record"])
def test_unusable_checkpoint_is_refused(flowclas, tmp_path, finished_run, damage, needle):
    recipe = copy_run(finished_run, tmp_path)
    damage(tmp_path / "run" / "checkpoints" / "last.pt")
    outcome = flowclas("train", "--config", recipe, "--output", "run", "--preview", "0", outputs=["run"])
    expect_refused(outcome, needle, "--restart")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("folder", ["checkpoints", "logs", "model"])
def test_run_subfolder_that_is_a_file(flowclas, tmp_path, finished_run, folder):
    recipe = copy_run(finished_run, tmp_path)
    shutil.rmtree(tmp_path / "run" / folder)
    (tmp_path / "run" / folder).write_text("mine")
    outcome = flowclas("train", "--config", recipe, "--output", "run", "--preview", "0")
    expect_refused(outcome, "is a file")


KILL_AT_STEP_3 = """
import os, signal, sys
from flowclas_ros.training.config import load_train_config
from flowclas_ros.training.trainer import Trainer

def kill(step):
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)

Trainer(load_train_config(sys.argv[1], ["run.checkpoint_every=2"]), sys.argv[2], progress=False, on_step=kill).run()
"""


def test_sigkilled_run_resumes_bit_identical_logging_each_step_once(tmp_path, dataset):
    from flowclas_ros.model import load_bundle

    recipe = write_recipe(tmp_path, dataset, steps=3)
    config = load_train_config(recipe, ["run.checkpoint_every=2"])
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_3, str(recipe), str(tmp_path / "run")],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert logged_steps(tmp_path / "run" / "logs" / "train.csv") == [1, 2, 3]  # the checkpoint holds step 2
    (tmp_path / "run" / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")  # a killed write
    resumed = load_bundle(Trainer(config, tmp_path / "run", progress=False).run()).head_state_dict()
    assert logged_steps(tmp_path / "run" / "logs" / "train.csv") == [1, 2, 3]
    assert logged_steps(tmp_path / "run" / "logs" / "val.csv") == [1, 2, 3]
    assert not temporaries(tmp_path / "run")
    whole = load_bundle(Trainer(config, tmp_path / "whole", progress=False).run()).head_state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_library_refuses_a_foreign_run_folder(tmp_path, dataset):
    config = load_train_config(write_recipe(tmp_path, dataset))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("my own notes")
    with pytest.raises(UserError, match="did not create"):
        Trainer(config, tmp_path / "run", progress=False).run()
    assert (tmp_path / "run" / "config.yaml").read_text() == "my own notes"
