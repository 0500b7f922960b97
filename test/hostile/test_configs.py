"""Hostile configs, recipes, bundles, checkpoints and device flags: each ends in one clear
line and a non-zero exit (or a UserError from the Python API), nothing outside the
command's output changed, nothing huge allocated, nothing unpickled.

Categories: ``--set`` overrides, model config files, size bounds, training recipes, bundle
configs, bundle tensors, devices and threads, checkpoints. Every case is written by the test.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_head, small_config
from PIL import Image
from safetensors.torch import load_file, save_file

from flowclas_ros.errors import UserError
from flowclas_ros.files import sha256
from flowclas_ros.model import FlowCLASNet, save_bundle
from flowclas_ros.model.bundle import CONFIG_FILE, WEIGHTS_FILE, load_bundle

from .conftest import Outcome
from .conftest import expect_refused as _expect_refused


def expect_refused(outcome: Outcome, *needles: str, code: int = 1) -> None:
    """The harness's check, and no other line on stderr (a message never runs over lines)."""
    _expect_refused(outcome, *needles, code=code)
    if code == 1:
        assert len(outcome.stderr.strip().splitlines()) == 1, outcome.stderr


def laughs(levels: int, indent: str = "  ", width: int = 10) -> str:
    """A "billion laughs" YAML mapping: ``width ** levels`` values after alias expansion."""
    lines = [f"{indent}l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines)


def nested_yaml(depth: int) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------- --set overrides

SET_CASES = {
    "yaml-error": ("flow.steps=[1", "--set flow.steps: not valid yaml"),
    "unclosed-quote": ("encoder.name='x", "not valid yaml"),
    "tab-indent": ("training={a: 1\t: b}", "not valid yaml"),
    "no-equals": ("flow.steps", "not of the form"),
    "empty-key": ("=3", "not of the form"),
    "empty-part": ("flow..steps=3", "not of the form"),
    "through-a-value": ("head.x=1", "unknown head"),
    "deep-nesting": ("training=" + nested_yaml(200), "nested"),
    "billion-laughs": ("training={" + ", ".join(
        [f"l0: &l0 [{', '.join(['x'] * 10)}]"] + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    ) + "}", "expands to more than"),
    "unknown-key": ("flow.speed=3", "unknown key(s) in flow: speed"),
    "string-for-int": ("flow.steps=many", "flow.steps: expected an integer"),
    "bool-for-int": ("projection_dim=true", "projection_dim: expected an integer"),
    "float-for-int": ("flow.steps=2.5", "flow.steps: expected an integer"),
    "null-for-int": ("flow.steps=null", "flow.steps: expected an integer"),
    "list-for-float": ("flow.clamp=[1]", "flow.clamp: expected a number"),
    "nan": ("threshold=.nan", "threshold: expected a finite number"),
    "inf": ("flow.clamp=.inf", "flow.clamp: expected a finite number"),
    "string-inf": ("flow.clamp=inf", "flow.clamp: expected a finite number"),
    "huge-int-for-float": ("flow.hidden_ratio=" + "9" * 400, "flow.hidden_ratio: expected a finite number"),
    "size-wrong-length": ("encoder.input_size=[64]", "encoder.input_size: expected a list of 2"),
    "size-not-list": ("encoder.input_size=64", "encoder.input_size: expected a list"),
    "mean-wrong-length": ("mean=[0.5, 0.5]", "mean: expected a list of 3"),
    "model-not-mapping": ("flow=3", "flow must be a mapping"),
    "free-form-not-mapping": ("training=[1, 2]", "training: expected a mapping"),
    "free-form-int-keys": ("metrics={1: 2}", "metrics: keys must be names"),
    "free-form-nested-date-key": ("training={a: {2001-12-14: 1}}", "training: keys must be names"),
    "free-form-date": ("training={when: 2001-12-14}", "training: holds date"),
    "free-form-set": ("training=!!set {a, b}", "training: expected a mapping"),
    "free-form-nested-set": ("metrics={a: !!set {b}}", "metrics: holds set"),
    "free-form-bytes": ("training={a: !!binary aGVsbG8=}", "training: holds bytes"),
    "free-form-nan": ("metrics={auroc: .nan}", "metrics: holds the non-finite"),
    "int-5000-digits": ("flow.steps=" + "9" * 5000, "not valid yaml"),
    "bad-timestamp": ("training={when: !!timestamp 2020-13-45}", "not valid yaml"),
    "bad-float-tag": ("flow.clamp=!!float x", "not valid yaml"),
    "head-a-list": ("head=[flowclas]", "unknown head"),
}


@pytest.mark.parametrize("override,needle", SET_CASES.values(), ids=SET_CASES.keys())
def test_set_override_refused(flowclas, override, needle):
    expect_refused(flowclas("init", "--output", "b", "--set", override, outputs=["b"]), needle)


# --------------------------------------------------------------------------- model config files

CONFIG_FILES: dict[str, tuple[bytes, str]] = {
    "a-list": (b"- 1\n- 2\n", "expected a mapping"),
    "a-scalar": (b"42\n", "expected a mapping"),
    "a-string": (b"hello\n", "expected a mapping"),
    "yaml-error": (b"flow: {steps: 2\n", "not valid yaml"),
    "python-tag": (b"flow: !!python/object/apply:os.system [touch pwned]\n", "not valid yaml"),
    "deep-nesting": (("training: " + nested_yaml(5000) + "\n").encode(), "nested"),
    "deep-mappings": (("training:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "v: 1\n").encode(),
                      "nested deeper"),
    "billion-laughs": (f"training:\n{laughs(9)}\n".encode(), "expands to more than"),
    "laughs-in-options": (f"metrics:\n{laughs(5)}\n".encode(), "metrics holds more than"),
    "not-utf8": (b"head: \xff\xfe\n", "not utf-8"),
    "unknown-key": (b"flow:\n  steps: 2\n  stepz: 3\n", "unknown key(s) in flow: stepz"),
    "unknown-top-key": (b"modle: {}\n", "unknown key(s) in config: modle"),
    "int-keys": (b"1: 2\n", "keys must be names"),
    "string-where-int": (b"projection_dim: '16'\n", "projection_dim: expected an integer"),
    "bool-where-int": (b"seg_classes: yes\n", "seg_classes: expected an integer"),
    "layers-of-strings": (b"encoder: {layers: [a, b]}\n", "encoder.layers: expected an integer"),
    "duplicate-key": (b"flow: {steps: 8, steps: 9}\n", "key 'steps' given twice"),
}


@pytest.mark.parametrize("content,needle", CONFIG_FILES.values(), ids=CONFIG_FILES.keys())
def test_model_config_file_refused(flowclas, tmp_path, content, needle):
    (tmp_path / "model.yaml").write_bytes(content)
    expect_refused(flowclas("init", "--config", "model.yaml", "--output", "b", outputs=["b"]), needle)
    assert not (tmp_path / "pwned").exists()


def test_model_config_that_is_a_folder_or_missing(flowclas, tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    expect_refused(flowclas("init", "--config", "folder.yaml", "--output", "b", outputs=["b"]), "cannot read config")
    expect_refused(flowclas("init", "--config", "absent.yaml", "--output", "b", outputs=["b"]), "cannot read config")


# --------------------------------------------------------------------------- size bounds

SIZES = {
    "flow-steps-1e9": ("flow.steps=1000000000", "flow.steps must be in [1, 64]"),
    "flow-steps-0": ("flow.steps=0", "flow.steps must be in"),
    "hidden-ratio-1e7": ("flow.hidden_ratio=1e7", "flow.hidden_ratio must be in (0, 16]"),
    "hidden-ratio-0": ("flow.hidden_ratio=0", "flow.hidden_ratio must be in"),
    "clamp-huge": ("flow.clamp=1e9", "flow.clamp must be in"),
    "clamp-negative": ("flow.clamp=-1", "flow.clamp must be in"),
    "seed-negative": ("flow.seed=-1", "flow.seed must be in"),
    "seed-huge": ("flow.seed=" + str(2**70), "flow.seed must be in"),
    "projection-1e9": ("projection_dim=1000000000", "projection_dim must be in [0, 4096]"),
    "projection-yaml-1e9": ("projection_dim=1e9", "projection_dim: expected an integer"),
    "projection-negative": ("projection_dim=-5", "projection_dim must be in"),
    "seg-classes-huge": ("seg_classes=100000000", "seg_classes must be in"),
    "input-side-huge": ("encoder.input_size=[100000, 100000]", "encoder.input_size must be"),
    "input-side-tiny": ("encoder.input_size=[1, 1]", "encoder.input_size must be"),
    "input-pixels": ("encoder.input_size=[8192, 8192]", "pixels"),
    "input-negative": ("encoder.input_size=[-64, 96]", "encoder.input_size must be"),
    "layers-empty": ("encoder.layers=[]", "encoder.layers needs 1"),
    "layers-many": ("encoder.layers=[" + ", ".join(["2"] * 100) + "]", "encoder.layers needs 1 to 32"),
    "layers-out-of-range": ("encoder.layers=[99]", "block indices"),
    "layers-negative": ("encoder.layers=[-1]", "block indices"),
    "encoder-unknown": ("encoder.name=banana", "unknown encoder 'banana'"),
    "efficientnet-option": ("encoder.options={rein: {weights: null}}", "efficientnet_lite0 takes no encoder options"),
    "std-zero": ("std=[0, 1, 1]", "std values must be in"),
    "mean-huge": ("mean=[1e30, 0, 0]", "mean values must be in"),
    "threshold-above-one": ("threshold=2", "threshold must be in [0, 1]"),
    "threshold-fpr-zero": ("threshold_fpr=0", "threshold_fpr must be in"),
    "cflow-vectors": ("head=cflow", "cflow.vectors=1000000000", "cflow.vectors must be in"),
    "cflow-condition": ("head=cflow", "cflow.condition_dim=1000000", "cflow.condition_dim must be in"),
    "cflow-condition-odd": ("head=cflow", "cflow.condition_dim=6", "multiple of 4"),
    "cflow-momentum": ("head=cflow", "cflow.reference_momentum=1", "cflow.reference_momentum must be in"),
}
DINO = ("encoder.name=dinov2_vits14", "encoder.weights=null", "encoder.layers=[0]", "encoder.input_size=[28, 28]")
REIN = {
    "rein-not-mapping": ("encoder.options={rein: 3}", "must be a mapping of rein settings"),
    "rein-a-list": ("encoder.options={rein: [1, 2]}", "must be a mapping of rein settings"),
    "rein-no-weights": ("encoder.options={rein: {rank: 4}}", "needs a 'weights' entry"),
    "rein-unknown-key": ("encoder.options={rein: {weights: null, size: 4}}", "bad options['rein']"),
    "rein-tokens-huge": ("encoder.options={rein: {weights: null, token_length: 1000000000}}", "token_length must be"),
    "rein-rank-zero": ("encoder.options={rein: {weights: null, rank: 0}}", "rank must be"),
    "rein-rank-string": ("encoder.options={rein: {weights: null, rank: many}}", "rank must be"),
    "rein-rank-bool": ("encoder.options={rein: {weights: null, rank: true}}", "rank must be"),
    "rein-weights-list": ("encoder.options={rein: {weights: [a]}}", "weights must be a path"),
    "rein-zero-flag": ("encoder.options={rein: {weights: null, zero_mlp_delta_f: 3}}", "zero_mlp_delta_f"),
    "dino-unknown-option": ("encoder.options={lora: 1}", "unknown dinov2 encoder options"),
    "dino-layer-range": ("encoder.layers=[12]", "layers must be block indices"),
}


@pytest.mark.parametrize("case", SIZES.values(), ids=SIZES.keys())
def test_size_out_of_bounds_refused(flowclas, case):
    *overrides, needle = case
    argv = [a for o in overrides for a in ("--set", o)]
    expect_refused(flowclas("init", "--output", "b", *argv, outputs=["b"]), needle)


@pytest.mark.parametrize("override,needle", REIN.values(), ids=REIN.keys())
def test_encoder_option_refused(flowclas, override, needle):
    argv = [a for o in (*DINO, override) for a in ("--set", o)]
    expect_refused(flowclas("init", "--output", "b", *argv, outputs=["b"]), needle)


def test_every_bound_names_a_setting():
    """A misspelt key in flowclas_ros.limits would check nothing: each must name a real setting."""
    from flowclas_ros import limits
    from flowclas_ros.model.config import CflowOptions
    from flowclas_ros.training.config import TrainConfig
    from flowclas_ros.training.objectives import ObjectiveConfig

    model = small_config(head="cflow", cflow=CflowOptions(), threshold_fpr=0.05)
    recipe = TrainConfig(objective=ObjectiveConfig(name="ml"))
    for root, bounds in ((model, limits.MODEL), (recipe, limits.TRAINING)):
        for key, bound in bounds.items():
            value = root
            for part in key.split("."):
                value = getattr(value, part)
            assert value is None or bound.contains(value), key


def test_bounds_hold_for_the_python_api():
    with pytest.raises(UserError, match="flow.steps must be in"):
        small_config(flow=small_config().flow.__class__(steps=10**9))
    with pytest.raises(UserError, match="training holds more than"):
        small_config(training={"a": list(range(20000))})


# --------------------------------------------------------------------------- training recipes

RECIPES: dict[str, tuple[bytes, tuple[str, ...], str]] = {
    "a-list": (b"- model\n- data\n", (), "expected a mapping"),
    "a-scalar": (b"3\n", (), "expected a mapping"),
    "deep-nesting": (("data: " + nested_yaml(1000) + "\n").encode(), (), "nested"),
    "billion-laughs": (f"data:\n  options:\n{laughs(9, '    ')}\n".encode(), (), "expands to more than"),
    "laughs-in-options": (f"data:\n  options:\n{laughs(5, '    ')}\n".encode(), (), "data.options holds more than"),
    "yaml-error": (b"optim: [\n", (), "not valid yaml"),
    "section-a-list": (b"optim: [1, 2]\n", (), "optim must be a mapping"),
    "unknown-section": (b"optimiser: {}\n", (), "unknown key(s) in config: optimiser"),
    "unknown-key": (b"run: {log_evry: 3}\n", (), "unknown key(s) in run: log_evry"),
}
RECIPE_SETS = {
    "log-every-0": ("run.log_every=0", "run.log_every must be in"),
    "val-every-0": ("run.val_every=0", "run.val_every must be in"),
    "checkpoint-every-0": ("run.checkpoint_every=0", "run.checkpoint_every must be in"),
    "checkpoint-every-negative": ("run.checkpoint_every=-10", "run.checkpoint_every must be in"),
    "steps-0": ("optim.steps=0", "optim.steps must be in"),
    "batch-0": ("optim.batch_size=0", "optim.batch_size must be in"),
    "batch-huge": ("optim.batch_size=100000000", "optim.batch_size must be in"),
    "devices-0": ("run.devices=0", "run.devices must be in"),
    "devices-huge": ("run.devices=100000", "run.devices must be in"),
    "devices-indivisible": ("run.devices=3", "must divide by run.devices"),
    "resize-0": ("data.resize=0", "data.resize must be in"),
    "resize-negative": ("data.resize=-0.5", "data.resize must be in"),
    "resize-huge": ("data.resize=1000", "data.resize must be in"),
    "lr-0": ("optim.lr=0", "optim.lr must be in"),
    "lr-nan": ("optim.lr=.nan", "optim.lr: expected a finite number"),
    "warmup-1": ("optim.warmup=1", "optim.warmup must be in"),
    "eps-0": ("optim.eps=0", "optim.eps must be in"),
    "grad-clip-0": ("optim.grad_clip=0", "optim.grad_clip must be in"),
    "data-init-negative": ("optim.data_init=-1", "optim.data_init must be in"),
    "workers-huge": ("data.workers=100000", "data.workers must be in"),
    "bins-0": ("run.bins=0", "run.bins must be in"),
    "calibrate-fpr-0": ("run.calibrate_fpr=0", "run.calibrate_fpr must be in"),
    "val-fraction-1": ("data.val_fraction=1", "data.val_fraction must be in"),
    "max-val-images-0": ("data.max_val_images=0", "data.max_val_images must be in"),
    "max-samples-0": ("objective.max_samples=0", "objective.max_samples must be in"),
    "temperature-0": ("objective.temperature=0", "temperature must be > 0"),
    "seed-negative": ("run.seed=-1", "run.seed must be in"),
    "steps-string": ("optim.steps=ten", "optim.steps: expected an integer"),
    "devices-bool": ("run.devices=true", "run.devices: expected an integer"),
    "model-steps-1e9": ("model.flow.steps=1000000000", "flow.steps must be in"),
    "set-yaml-error": ("optim.lr={", "not valid yaml"),
}
RECIPE_FLAGS = {
    "devices-0": (("--devices", "0"), "run.devices must be in"),
    "steps-negative": (("--steps", "-1"), "optim.steps must be in"),
    "batch-size-0": (("--batch-size", "0"), "optim.batch_size must be in"),
    "missing-recipe": (("--config", "absent.yaml"), "cannot read recipe absent.yaml"),
}


@pytest.mark.parametrize("content,extra,needle", RECIPES.values(), ids=RECIPES.keys())
def test_recipe_file_refused(flowclas, tmp_path, content, extra, needle):
    (tmp_path / "recipe.yaml").write_bytes(content)
    expect_refused(flowclas("train", "--config", "recipe.yaml", "--output", "run", *extra, outputs=["run"]), needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,needle", RECIPE_SETS.values(), ids=RECIPE_SETS.keys())
def test_recipe_override_refused(flowclas, tmp_path, override, needle):
    out = flowclas("train", "--config", "synthetic", "--output", "run", "--set", override, outputs=["run"])
    expect_refused(out, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,needle", RECIPE_FLAGS.values(), ids=RECIPE_FLAGS.keys())
def test_recipe_flag_refused(flowclas, tmp_path, flags, needle):
    argv = ["train", "--config", "synthetic", "--output", "run", *flags]
    expect_refused(flowclas(*argv, outputs=["run"]), needle)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_bundle(randomize_head(FlowCLASNet(small_config())).eval(), tmp_path_factory.mktemp("t") / "bundle")


@pytest.fixture
def bundle(tmp_path, template) -> Path:
    """A copy of the small bundle in the test's folder, and one image to detect on."""
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(tmp_path / "frame.png")
    return Path(shutil.copytree(template, tmp_path / "bundle"))


def detect(flowclas, *extra: str):
    return flowclas("detect", "--model", "bundle", "--input", "frame.png", "--output", "out", *extra, outputs=["out"])


def edit_meta(bundle: Path, edit) -> None:
    meta = json.loads((bundle / CONFIG_FILE).read_text())
    meta = edit(meta) or meta
    (bundle / CONFIG_FILE).write_text(json.dumps(meta))


def edit_tensors(bundle: Path, edit) -> None:
    """Change the weights and record their new hash, as a forger would."""
    tensors = load_file(str(bundle / WEIGHTS_FILE))
    edit(tensors)
    save_file(tensors, str(bundle / WEIGHTS_FILE))
    edit_meta(bundle, lambda m: m.update(weights_sha256=sha256(bundle / WEIGHTS_FILE)))


def test_the_unedited_bundle_detects(flowclas, bundle):
    out = detect(flowclas)
    assert out.code == 0 and "Traceback" not in out.stderr, out.stderr


def _set_model(key: str, value):
    def edit(meta):
        node = meta["model"]
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return edit


META_CASES = {
    "a-list": (lambda m: [m], "not a flowclas bundle config"),
    "a-string": (lambda m: "flowclas-bundle", "not a flowclas bundle config"),
    "version-a-list": (lambda m: m.update(format_version=[2] * 1000), "bundle format version"),
    "model-a-list": (lambda m: m.update(model=[1, 2]), "config must be a mapping"),
    "model-missing": (lambda m: {k: v for k, v in m.items() if k != "model"}, "config must be a mapping"),
    "steps-1e9": (_set_model("flow.steps", 10**9), "flow.steps must be in"),
    "projection-1e9": (_set_model("projection_dim", 10**9), "projection_dim must be in"),
    "hidden-ratio-1e7": (_set_model("flow.hidden_ratio", 1e7), "flow.hidden_ratio must be in"),
    "input-size-3": (_set_model("encoder.input_size", [64, 96, 3]), "expected a list of 2"),
    "layers-huge": (_set_model("encoder.layers", [2] * 10000), "encoder.layers needs"),
    "unknown-key": (_set_model("flow.extra", 1), "unknown key(s) in flow: extra"),
    "rein-not-mapping": (_set_model("encoder.options", {"rein": 3}), "takes no encoder options"),
    "threshold-nan-string": (_set_model("threshold", "NaN"), "threshold: expected a finite number"),
    "std-zero": (_set_model("std", [0.0, 0.5, 0.5]), "std values"),
    "mean-nan": (_set_model("mean", [float("nan"), 0.5, 0.5]), "mean: expected a finite number"),
    "std-infinity": (_set_model("std", [0.5, float("inf"), 0.5]), "std: expected a finite number"),
    "threshold-infinity": (_set_model("threshold", float("-inf")), "threshold: expected a finite number"),
    "clamp-1e999": (_set_model("flow.clamp", 1e308 * 10), "flow.clamp: expected a finite number"),
    "seed-huge": (_set_model("flow.seed", 2**80), "flow.seed must be in"),
    "encoder-unknown": (_set_model("encoder.name", "resnet_from_the_internet"), "unknown encoder"),
    "training-not-mapping": (_set_model("training", [1]), "training: expected a mapping"),
}


@pytest.mark.parametrize("edit,needle", META_CASES.values(), ids=META_CASES.keys())
def test_bundle_config_refused(flowclas, bundle, edit, needle):
    edit_meta(bundle, edit)
    expect_refused(detect(flowclas), needle)


RAW_META = {
    "deep-json": b'{"a": ' * 100000 + b"1" + b"}" * 100000,
    "deep-json-list": b"[" * 100000 + b"]" * 100000,
    "moderately-deep": b'{"format": "flowclas-bundle", "x": ' + b"[" * 100 + b"]" * 100 + b"}",
    "not-json": b"{format: flowclas",
    "not-utf8": b'{"format": "\xff"}',
    "nan-literal": b"NaN",
    "int-5000-digits": b'{"format": "flowclas-bundle", "format_version": ' + b"9" * 5000 + b"}",
    "huge-claimed-length": b'{"format": "flowclas-bundle", "x": "' + b"a" * (17 * 2**20) + b'"}',
}


@pytest.mark.parametrize("content", RAW_META.values(), ids=RAW_META.keys())
def test_bundle_config_bytes_refused(flowclas, bundle, content):
    (bundle / CONFIG_FILE).write_bytes(content)
    expect_refused(detect(flowclas), "bundle")


def _set_tensor(suffix: str, fill):
    def edit(tensors):
        key = next(k for k in sorted(tensors) if k.endswith(suffix))
        tensors[key] = fill(tensors[key].clone())
    return edit


def _poison(value: float):
    def fill(t):
        t.view(-1)[0] = value
        return t
    return fill


TENSOR_CASES = {
    "nan-weight": (_set_tensor("coupling.subnet.out.weight", _poison(float("nan"))), "non-finite"),
    "inf-actnorm": (_set_tensor("actnorm.log_scale", _poison(float("inf"))), "non-finite"),
    "nan-base": (_set_tensor("bases.0.mu", _poison(float("nan"))), "non-finite"),
    "nan-layernorm": (_set_tensor("norms.1.weight", _poison(float("-inf"))), "non-finite"),
    "nan-encoder": (_set_tensor("encoder.trunk._conv_stem.weight", _poison(float("nan"))), "non-finite"),
    "perm-out-of-range": (_set_tensor("permute.perm", _poison(10**6)), "not a permutation"),
    "perm-negative": (_set_tensor("permute.perm", _poison(-1)), "not a permutation"),
    "perm-duplicate": (_set_tensor("permute.perm", lambda t: torch.zeros_like(t)), "not a permutation"),
    "inv-wrong": (_set_tensor("permute.inv", lambda t: t.flip(0)), "not the inverse"),
    "shape-mismatch": (_set_tensor("bases.0.mu", lambda t: torch.zeros(1, 3, 1, 1)), "do not match the config"),
    "dtype-mismatch": (_set_tensor("bases.0.mu", lambda t: t.double()), "do not match the config"),
    "missing-tensor": (lambda ts: ts.pop(next(k for k in sorted(ts) if k.endswith("bases.0.mu"))), "missing"),
    "extra-tensor": (lambda ts: ts.update(extra=torch.zeros(1)), "unexpected: extra"),
}


@pytest.mark.parametrize("edit,needle", TENSOR_CASES.values(), ids=TENSOR_CASES.keys())
def test_bundle_tensors_refused(flowclas, bundle, edit, needle):
    edit_tensors(bundle, edit)
    expect_refused(detect(flowclas), needle)


def test_pickled_weights_are_never_unpickled(flowclas, bundle, tmp_path):
    marker = tmp_path / "marker"
    (bundle / WEIGHTS_FILE).write_bytes(_evil_pickle(marker))
    edit_meta(bundle, lambda m: m.update(weights_sha256=sha256(bundle / WEIGHTS_FILE)))
    expect_refused(detect(flowclas), "cannot read")
    assert not marker.exists()


def test_encoder_weights_named_by_a_bundle_are_never_unpickled(flowclas, tmp_path):
    torch.manual_seed(0)
    config = small_config()
    config.encoder.weights = "package"
    save_bundle(randomize_head(FlowCLASNet(config)).eval(), tmp_path / "bundle")  # the head only
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(tmp_path / "frame.png")
    (tmp_path / "evil.pth").write_bytes(_evil_pickle(tmp_path / "marker"))
    edit_meta(tmp_path / "bundle", _set_model("encoder.weights", str(tmp_path / "evil.pth")))
    out = detect(flowclas)
    expect_refused(out, "weights-only torch file")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "marker").exists()


def test_safetensors_header_bomb_refused(flowclas, bundle):
    header = json.dumps({"x": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 2**42]}}).encode()
    (bundle / WEIGHTS_FILE).write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    edit_meta(bundle, lambda m: m.update(weights_sha256=sha256(bundle / WEIGHTS_FILE)))
    expect_refused(detect(flowclas), "cannot read")


def test_non_finite_refused_through_the_python_api(bundle):
    edit_tensors(bundle, _set_tensor("bases.1.ls", _poison(float("nan"))))
    with pytest.raises(UserError, match="non-finite"):
        load_bundle(bundle)


# --------------------------------------------------------------------------- devices and threads

DEVICES = {
    "banana": ("--device", "banana"),
    "cuda-7": ("--device", "cuda:7"),
    "meta": ("--device", "meta"),
    "empty": ("--device", ""),
    "cuda-negative": ("--device", "cuda:-1"),
    "threads-negative": ("--threads", "-1"),
    "threads-huge": ("--threads", "100000"),
    "threads-word": ("--threads", "many"),
}


@pytest.mark.parametrize("flags", DEVICES.values(), ids=DEVICES.keys())
def test_device_and_threads_refused(flowclas, bundle, flags):
    expect_refused(detect(flowclas, *flags), flags[0], code=2)


TRAIN = ("train", "--config", "synthetic", "--output", "out")
NUMBERS = {
    "train-preview-huge": ((*TRAIN, "--preview", "100000"), "--preview"),
    "train-preview-negative": ((*TRAIN, "--preview", "-1"), "--preview"),
    "train-preview-word": ((*TRAIN, "--preview", "some"), "--preview"),
    "train-steps-word": ((*TRAIN, "--steps", "ten"), "--steps"),
}


@pytest.mark.parametrize("argv,flag", NUMBERS.values(), ids=NUMBERS.keys())
def test_numeric_flag_refused(flowclas, bundle, argv, flag):
    out = flowclas(*argv, outputs=["out"])
    expect_refused(out, code=2)
    assert f"argument {flag}" in out.stderr


OTHER_COMMANDS = {
    "train": TRAIN,
    "export": ("export", "--model", "bundle", "--format", "onnx"),
    "bench": ("bench", "--model", "bundle"),
}


@pytest.mark.parametrize("argv", OTHER_COMMANDS.values(), ids=OTHER_COMMANDS.keys())
def test_device_refused_by_every_command(flowclas, bundle, argv):
    expect_refused(flowclas(*argv, "--device", "banana", outputs=["out"]), code=2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["detect", "train"])
def test_cuda_without_cuda_refused(flowclas, bundle, command):
    argv = (["detect", "--model", "bundle", "--input", "frame.png", "--output", "out"] if command == "detect"
            else ["train", "--config", "synthetic", "--output", "out"])
    out = flowclas(*argv, "--device", "cuda", outputs=["out"])
    expect_refused(out, code=2)
    assert "no cuda device" in out.stderr.lower()


# --------------------------------------------------------------------------- checkpoints


class _Marker:
    """Unpickling this creates ``path`` (it must never happen)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _evil_pickle(marker: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"norms.0.weight": torch.ones(2), "payload": _Marker(marker)}, buffer)
    return buffer.getvalue()


def _truncated(path: Path) -> None:
    torch.save({"norms.0.weight": torch.ones(4)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _raw_reduce(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(_Marker(path.parent / "marker"), protocol=2))


def _zip_without_data(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")


def _saved(value):
    return lambda path: torch.save(value, path)


CHECKPOINTS = {
    "reduce-in-torch-zip": (lambda p: p.write_bytes(_evil_pickle(p.parent / "marker")), "pickles objects besides tensors"),
    "reduce-raw-pickle": (_raw_reduce, "pickles objects besides tensors"),
    "truncated-zip": (_truncated, "as a torch weights file"),
    "garbage": (lambda p: p.write_bytes(b"\x00garbage" * 100), "as a torch weights file"),
    "empty-file": (lambda p: p.write_bytes(b""), "as a torch weights file"),
    "zip-without-tensors": (_zip_without_data, "as a torch weights file"),
    "a-list": (_saved([torch.ones(2)]), "does not hold a state dict"),
    "empty-dict": (_saved({}), "does not hold a state dict"),
    "non-tensor-values": (_saved({"norms.0.weight": torch.ones(2), "note": "hi"}), "not tensors: note"),
    "int-keys": (_saved({1: torch.ones(2)}), "not tensors: 1"),
    "wrong-keys": (_saved({"backbone.weight": torch.ones(2)}), "not a checkpoint of the authors"),
    "no-flow": (_saved({"norms.0.weight": torch.ones(4)}), "no coupling flow"),
    "one-channel": (_saved({"norms.0.weight": torch.ones(1)}), "at least 2"),
    "gapped-indices": (_saved({"norms.0.weight": torch.ones(4), "norms.5.weight": torch.ones(4)}), "not 0..n-1"),
}


@pytest.mark.parametrize("write,needle", CHECKPOINTS.values(), ids=CHECKPOINTS.keys())
def test_checkpoint_refused(flowclas, tmp_path, write, needle):
    write(tmp_path / "ckpt.pt")
    out = flowclas("import-checkpoint", "--checkpoint", "ckpt.pt", "--output", "b", outputs=["b"])
    expect_refused(out, needle)
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "b" / CONFIG_FILE).exists()


def test_safetensors_checkpoint_garbage_refused(flowclas, tmp_path):
    (tmp_path / "ckpt.safetensors").write_bytes(b"\xff" * 64)
    out = flowclas("import-checkpoint", "--checkpoint", "ckpt.safetensors", "--output", "b", outputs=["b"])
    expect_refused(out, "as safetensors")


# A head-only checkpoint in the authors' layout for EfficientNet-Lite0 block 2 (24 channels).
EFFICIENTNET_YAML = "encoder: {name: efficientnet_lite0, layers: [2], weights: package, input_size: [64, 96]}\n"


def _heads(c: int = 24, steps: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    half = c // 2
    sd = {"norms.0.weight": torch.ones(c), "norms.0.bias": torch.zeros(c),
          "base_dists.0.mu": torch.zeros(c), "base_dists.0.log_scale": torch.zeros(c)}
    for k in range(steps):
        a, p, s = (f"flow_blocks.0.module_list.{3 * k + j}." for j in range(3))
        perm = torch.randperm(c, generator=g)
        sd.update({a + "loc": torch.zeros(1, c, 1, 1), a + "log_scale": torch.zeros(1, c, 1, 1),
                   p + "perm": perm, p + "perm_inv": torch.argsort(perm)})
        for n in ("gn1", "gn2", "gn3"):
            sd[f"{s}subnet.{n}.weight"], sd[f"{s}subnet.{n}.bias"] = torch.ones(half), torch.zeros(half)
        for n, shape in (("conv1", (half, half, 3, 3)), ("conv2", (half, half, 1, 1)), ("conv3", (half, half, 3, 3)),
                         ("conv_out", (c, half, 1, 1))):
            sd[f"{s}subnet.{n}.weight"] = torch.randn(*shape, generator=g) * 0.01
    return sd


def _with(change):
    def make():
        sd = _heads()
        change(sd)
        return sd
    return make


HEAD_CHECKPOINTS = {
    "nan-conv": (_with(lambda sd: sd["flow_blocks.0.module_list.2.subnet.conv1.weight"].view(-1).__setitem__(0, float("nan"))),
                 "non-finite"),
    "inf-base": (_with(lambda sd: sd["base_dists.0.mu"].__setitem__(3, float("inf"))), "non-finite"),
    "perm-out-of-range": (_with(lambda sd: sd["flow_blocks.0.module_list.1.perm"].__setitem__(0, 999)), "not a permutation"),
    "perm-inv-wrong": (_with(lambda sd: sd.update({"flow_blocks.0.module_list.1.perm_inv": torch.arange(24)})),
                       "not the inverse"),
    "scalar-conv": (_with(lambda sd: sd.update({"flow_blocks.0.module_list.2.subnet.conv2.weight": torch.tensor(1.0)})),
                    "not the authors' layout"),
    "normalizer-a-vector": (_with(lambda sd: sd.update({"base_dists.0.log_normalizer": torch.zeros(5)})), "log_normalizer"),
    "shape-mismatch": (_with(lambda sd: sd.update({"base_dists.0.mu": torch.zeros(7)})), "does not fit"),
    "too-many-steps": (lambda: _heads(steps=65), "flow.steps must be in"),
    "stray-tensor": (_with(lambda sd: sd.update({"proj_heads.9.weight": torch.zeros(1)})), "no counterpart"),
}


def test_head_checkpoint_imports(flowclas, tmp_path):
    torch.save(_heads(), tmp_path / "ckpt.pt")
    (tmp_path / "model.yaml").write_text(EFFICIENTNET_YAML)
    out = flowclas("import-checkpoint", "--checkpoint", "ckpt.pt", "--output", "b", "--config", "model.yaml",
                   outputs=["b"])
    assert out.code == 0, out.stderr


@pytest.mark.parametrize("make,needle", HEAD_CHECKPOINTS.values(), ids=HEAD_CHECKPOINTS.keys())
def test_head_checkpoint_refused(flowclas, tmp_path, make, needle):
    torch.save(make(), tmp_path / "ckpt.pt")
    (tmp_path / "model.yaml").write_text(EFFICIENTNET_YAML)
    out = flowclas("import-checkpoint", "--checkpoint", "ckpt.pt", "--output", "b", "--config", "model.yaml",
                   outputs=["b"])
    expect_refused(out, needle)
    assert not (tmp_path / "b" / CONFIG_FILE).exists()


def _user_folder(tmp_path: Path, kind: str) -> None:
    if kind == "a-file":
        (tmp_path / "b").write_text("the user's notes")
    else:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / ("config.json" if kind == "a-bundle" else "notes.txt")).write_text("the user's")


@pytest.mark.parametrize("kind", ["a-file", "a-bundle", "a-folder-with-notes"])
@pytest.mark.parametrize("command", ["init", "import-checkpoint"])
def test_output_that_holds_something_is_never_overwritten(flowclas, tmp_path, kind, command):
    _user_folder(tmp_path, kind)
    torch.save(_heads(), tmp_path / "ckpt.pt")
    (tmp_path / "model.yaml").write_text(EFFICIENTNET_YAML)
    argv = (["init", "--config", "model.yaml"] if command == "init"
            else ["import-checkpoint", "--checkpoint", "ckpt.pt", "--config", "model.yaml"])
    expect_refused(flowclas(*argv, "--output", "b"), "--output b")  # nothing may change at all


IMPORT_CONFIGS = {
    "a-list": (b"- 1\n", "expected a mapping"),
    "deep": (("model: " + nested_yaml(1000)).encode(), "nested"),
    "laughs": (f"model:\n  training:\n{laughs(9)}\n".encode(), "expands to more than"),
    "model-a-list": (b"model: [1]\n", "unknown key(s) in config: model"),
}


@pytest.mark.parametrize("content,needle", IMPORT_CONFIGS.values(), ids=IMPORT_CONFIGS.keys())
def test_import_config_refused(flowclas, tmp_path, content, needle):
    torch.save(_heads(), tmp_path / "ckpt.pt")
    (tmp_path / "model.yaml").write_bytes(content)
    out = flowclas("import-checkpoint", "--checkpoint", "ckpt.pt", "--output", "b", "--config", "model.yaml",
                   outputs=["b"])
    expect_refused(out, needle)
