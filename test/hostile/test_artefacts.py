"""Hostile compiled artefacts: pickles and foreign operators in torch.export archives, unsafe
ONNX files, artefacts from another machine, cache entries flowclas did not write, bad
manifests and trust records. Each case: one clear line (or a logged fallback for a foreign
artefact under ``auto``), no code run, nothing outside the command's outputs changed.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowclas_ros.deploy import trust
from flowclas_ros.deploy.archive import load_program, save_program
from flowclas_ros.deploy.cache import MANIFEST, artefact_dir, artefact_key, ensure_artefact
from flowclas_ros.deploy.compile import FILES
from flowclas_ros.deploy.errors import UnsafeArtefactError
from flowclas_ros.deploy.ops import check_program
from flowclas_ros.deploy.shapes import InputShape
from flowclas_ros.files import sha256
from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, ModelConfig, save_bundle
from flowclas_ros.runtime import Detector
from flowclas_ros.runtime.backends import create_backend

from .conftest import expect_refused

SIZE = (32, 48)
FORMAT = {"torch-export": "torch-export", "onnxruntime": "onnx"}


class Marker:
    """Unpickling this creates ``path``: the proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """The trust record in a folder of this module (never the user's)."""
    folder = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(trust.STATE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def pristine(state, tmp_path_factory):
    """A tiny bundle with a torch-export artefact built (and recorded) here."""
    torch.manual_seed(0)
    config = ModelConfig(encoder=EncoderConfig(name="efficientnet_lite0", layers=[1], weights=None, input_size=SIZE),
                         flow=FlowConfig(steps=1, hidden_ratio=0.5), projection_dim=8)
    bundle = save_bundle(FlowCLASNet(config).eval(), tmp_path_factory.mktemp("pristine") / "bundle")
    ensure_artefact(bundle, "torch-export", "fp32", InputShape.static(*SIZE))
    return bundle


@pytest.fixture
def bundle(pristine, tmp_path):
    """A copy of the pristine bundle in the test's folder, and an image to detect on. Its cache
    also holds a clean ONNX artefact from elsewhere, so ``auto`` passes onnxruntime (logged) and
    reaches torch-export without building anything."""
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    plant(copy, "onnx", _onnx("clean", tmp_path))
    Image.fromarray(np.full((*SIZE, 3), 128, np.uint8)).save(tmp_path / "frame.png")
    return copy


def _key(bundle: Path, backend: str = "torch-export") -> dict:
    return artefact_key(bundle, backend, "fp32", InputShape.static(*SIZE), "cpu")


def _artefact(bundle: Path, backend: str = "torch-export") -> Path:
    return artefact_dir(bundle, _key(bundle, backend)) / FILES[backend]


def plant(bundle: Path, backend: str, data: bytes, trusted: bool = False) -> Path:
    """Put ``data`` into the cache as the ``backend`` artefact with a consistent manifest (what an
    attacker shipping a bundle would do); ``trusted`` also records it as built here."""
    key = _key(bundle, backend)
    folder = artefact_dir(bundle, key)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / FILES[backend]
    path.write_bytes(data)
    manifest = {"key": key, "files": {path.name: sha256(path)}, "pad_multiple": 1, "machine": "elsewhere"}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    if trusted:
        trust.record_built(path, sha256(path), key)
    return path


def rezip(archive: Path, extra=(), drop=(), replace=(), top=()) -> bytes:
    """The archive's bytes with entries (names relative to its root folder) added, dropped or
    replaced, and ``top`` entries added outside the root folder."""
    extra, replace = dict(extra), dict(replace)
    out = archive.with_suffix(".new")
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        root = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            rel = info.filename[len(root) + 1:]
            if rel not in drop:
                dst.writestr(info, replace.get(rel, src.read(info)))
        for rel, data in extra.items():
            dst.writestr(f"{root}/{rel}", data)
        for name, data in dict(top).items():
            dst.writestr(name, data)
    data = out.read_bytes()
    out.unlink()
    return data


def _graph(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as z:
        return json.loads(z.read(next(n for n in z.namelist() if n.endswith("models/model.json"))))


# ---- S1: archives carrying pickles (torch unpickles them with weights_only=False)


def _weights_config(archive: Path) -> dict:
    with zipfile.ZipFile(archive) as z:
        return json.loads(z.read(next(n for n in z.namelist() if n.endswith("model_weights_config.json"))))


def _use_pickle(archive: Path, evil: bytes) -> bytes:
    """The first weight stored as a pickle, as torch does for tensor subclasses."""
    config = _weights_config(archive)
    meta = next(iter(config["config"].values()))
    meta["use_pickle"] = True
    return rezip(archive, replace={"data/weights/model_weights_config.json": json.dumps(config).encode(),
                                   f"data/weights/{meta['path_name']}": evil})


PICKLED = {
    "legacy_weights": lambda a, evil: rezip(a, {"data/weights/model.pt": evil}),
    "legacy_constants": lambda a, evil: rezip(a, {"data/constants/model.pt": evil}),
    "sample_inputs": lambda a, evil: rezip(a, replace={"data/sample_inputs/model.pt": evil}),
    "use_pickle_weight": _use_pickle,
    "custom_object": lambda a, evil: rezip(a, {"data/constants/custom_obj_0": evil}),
    "opaque_object": lambda a, evil: rezip(a, {"data/constants/opaque_obj_0": evil}),
    "legacy_2_7_layout": lambda a, evil: rezip(a, top={"version": b"1", "serialized_state_dict.pt": evil}),
    "second_root": lambda a, evil: rezip(a, top={"other/data/weights/model.pt": evil}),
    "extra_file": lambda a, evil: rezip(a, {"extra/module_info.json": b"{}"}),
    "aoti_package": lambda a, evil: rezip(a, {"data/aotinductor/model/model.so": b"\x7fELF"}),
    "unnamed_weight": lambda a, evil: rezip(a, {"data/weights/weight_99999": evil}),
    "graph_json_list": lambda a, evil: rezip(a, replace={"models/model.json": json.dumps([_graph(a)]).encode()}),
    "graph_nested": lambda a, evil: rezip(a, replace={"models/model.json": b"[" * 5000 + b"]" * 5000}),
    "no_graph": lambda a, evil: rezip(a, drop={"models/model.json"}),
    "not_a_zip": lambda a, evil: evil,
}


def _pickled(bundle: Path, case: str, marker: Path) -> bytes:
    return PICKLED[case](_artefact(bundle), pickle.dumps(Marker(marker)))


COMMANDS = {
    "detect": lambda b, t: ("detect", "--model", b, "--input", t / "frame.png", "--output", t / "out", "--backend", "torch-export"),
    "detect_auto": lambda b, t: ("detect", "--model", b, "--input", t / "frame.png", "--output", t / "out", "--backend", "auto"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(PICKLED))
def test_pickled_archive_is_refused(flowclas, bundle, tmp_path, case, command):
    marker = tmp_path / "pwned"
    plant(bundle, "torch-export", _pickled(bundle, case, marker))
    outcome = flowclas(*COMMANDS[command](bundle, tmp_path), outputs=["out"])
    expect_refused(outcome, "refusing")
    assert not marker.exists()


def test_pickled_archive_refused_by_bench(flowclas, bundle, tmp_path):
    marker = tmp_path / "pwned"
    plant(bundle, "torch-export", _pickled(bundle, "legacy_weights", marker))
    outcome = flowclas("bench", "--model", bundle, "--backends", "torch,torch-export", "--warmup", "0", "--iters", "1",
                       "--no-pipeline", "--threads", "1", "--output", tmp_path / "bench", outputs=["bench"])
    expect_refused(outcome, "refusing to load")  # an altered artefact is an error, not a skipped row
    assert not marker.exists()


@pytest.mark.parametrize("case", ["legacy_weights", "sample_inputs", "use_pickle_weight"])
def test_pickled_archive_refused_even_when_trusted(bundle, tmp_path, case):
    """The audit runs on artefacts built here too (defence in depth)."""
    marker = tmp_path / "pwned"
    plant(bundle, "torch-export", _pickled(bundle, case, marker), trusted=True)
    with pytest.raises(UnsafeArtefactError, match="refusing"):
        create_backend("torch-export", bundle, shape=InputShape.static(*SIZE))
    with pytest.raises(UnsafeArtefactError, match="refusing"):
        load_program(_artefact(bundle))
    with pytest.raises(UnsafeArtefactError, match="refusing"):  # what the node and replay call
        Detector.from_bundle(bundle, backend="auto")
    assert not marker.exists()


# ---- S2: pickle-free graphs that call file or process operators, or evaluate Python


class FromFile(torch.nn.Module):
    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    def forward(self, x):
        t = torch.from_file(self.victim, shared=True, size=16, dtype=torch.uint8)
        t.fill_(65)
        return x.mean(1) + t.sum()


def _from_file_program(victim: Path, path: Path) -> Path:
    """An ExportedProgram calling aten.from_file(victim, shared=True) and fill_ (needs a fake kernel to export)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        lib.impl("from_file", lambda f, s=None, size=0, **kw: torch.empty(size, dtype=kw.get("dtype"), device="meta"), "Meta")
        program = torch.export.export(FromFile(str(victim)), (torch.zeros(1, 3, *SIZE),))
    finally:
        lib._destroy()
    save_program(program, path)
    return path


def _graph_case(archive: Path, case: str, marker: Path) -> bytes:
    graph = _graph(archive)
    node = graph["graph_module"]["graph"]["nodes"][0]
    if case == "torch_save_target":
        node["target"] = "torch.save"
    elif case == "in_place_target":
        node["target"] = "torch.ops.aten.add_.Tensor"
    elif case == "extension_target":
        node["target"] = "#evil:op"
    elif case == "sympify_eval":  # sympify evaluates Python: torch would run this while loading
        evil = f"__import__('os').system('touch {marker}') * 0 + s77"
        graph["graph_module"]["graph"].setdefault("sym_int_values", {})["evil"] = {"as_expr": {"expr_str": evil, "hint": None}}
    return rezip(archive, replace={"models/model.json": json.dumps(graph).encode()})


GRAPH_CASES = ["torch_save_target", "in_place_target", "extension_target", "sympify_eval"]


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_hostile_graph_is_refused(flowclas, bundle, tmp_path, case):
    marker = tmp_path / "pwned"
    plant(bundle, "torch-export", _graph_case(_artefact(bundle), case, marker), trusted=True)
    outcome = flowclas(*COMMANDS["detect_auto"](bundle, tmp_path), outputs=["out"])
    expect_refused(outcome, "refusing")
    assert not marker.exists()


@pytest.mark.parametrize("trusted", [False, True], ids=["foreign", "trusted"])
def test_from_file_program_is_refused(flowclas, bundle, tmp_path, trusted):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's data")
    program = _from_file_program(victim, tmp_path / "model.pt2")
    plant(bundle, "torch-export", program.read_bytes(), trusted=trusted)
    program.unlink()
    outcome = flowclas(*COMMANDS["detect_auto"](bundle, tmp_path), outputs=["out"])
    expect_refused(outcome, "aten.from_file")
    assert victim.read_text() == "the user's data"
    with pytest.raises(UnsafeArtefactError, match="from_file"):
        load_program(_artefact(bundle))


def test_loaded_program_is_checked_after_loading(tmp_path):
    """The graph check on the deserialised program refuses from_file and input mutation by itself."""
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's data")
    program = torch.export.load(str(_from_file_program(victim, tmp_path / "model.pt2")))  # loading runs nothing
    with pytest.raises(UnsafeArtefactError, match="from_file"):
        check_program(program, Path("model.pt2"))

    class Mutates(torch.nn.Module):
        def forward(self, x):
            x.add_(1)
            return x * 2

    with pytest.raises(UnsafeArtefactError, match="add_.Tensor, an operator writing"):
        check_program(torch.export.export(Mutates(), (torch.zeros(2),)), Path("m.pt2"))
    assert victim.read_text() == "the user's data" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "victim.txt"]


# ---- ONNX: external data, foreign operators, files ONNX Runtime rejects


def _onnx(case: str, victim: Path) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, *SIZE])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, *SIZE])
    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["score"], keepdims=0)]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    functions = []
    if case == "external_data":
        axes = TensorProto(name="axes", data_type=TensorProto.INT64, dims=[1], data_location=TensorProto.EXTERNAL)
        axes.external_data.add(key="location", value=str(victim))
    elif case == "custom_domain":
        nodes.append(helper.make_node("Exec", ["score"], ["unused"], domain="com.evil"))
    elif case == "local_function":
        functions.append(helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])],
                                              [helper.make_opsetid("", 18)]))
    elif case == "ort_rejects":  # passes the audit (allowed ops, no external data); ONNX Runtime refuses the types
        axes = helper.make_tensor("axes", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(nodes, "g", [x], [y], [axes])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.evil", 1)] if case == "custom_domain" else [])
    return helper.make_model(graph, opset_imports=opsets, functions=functions).SerializeToString()


ONNX_CASES = ["external_data", "custom_domain", "local_function", "garbage"]


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
@pytest.mark.parametrize("case", ONNX_CASES)
def test_unsafe_onnx_is_refused(flowclas, bundle, tmp_path, case, backend):
    victim = tmp_path / "secret.bin"
    victim.write_bytes(b"\0" * 8)
    plant(bundle, "onnx", b"\x08\x07garbage" * 10 if case == "garbage" else _onnx(case, victim))
    outcome = flowclas("detect", "--model", bundle, "--input", tmp_path / "frame.png", "--output", tmp_path / "out",
                       "--backend", backend, outputs=["out"])
    expect_refused(outcome, "refusing" if case != "garbage" else "not a valid onnx file")


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_onnx_runtime_rejection_is_one_line(flowclas, bundle, tmp_path, backend):
    """Built here (so trusted), audited clean, yet ONNX Runtime refuses it: one line, or auto's fallback."""
    plant(bundle, "onnx", _onnx("ort_rejects", tmp_path), trusted=True)
    outcome = flowclas("detect", "--model", bundle, "--input", tmp_path / "frame.png", "--output", tmp_path / "out",
                       "--backend", backend, outputs=["out"])
    if backend == "auto":  # logged, then the next backend (the torch-export artefact built here)
        assert outcome.code == 0 and "ONNX Runtime cannot load" in outcome.stderr and "using torch-export" in outcome.stderr
    else:
        expect_refused(outcome, "ONNX Runtime cannot load")


# ---- trust: artefacts from another machine, records that are corrupt or hostile


def test_foreign_artefact_refused_until_rebuilt(flowclas, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv(trust.STATE_ENV, str(tmp_path / "other-machine"))  # an empty record: nothing built here
    artefact = _artefact(bundle)
    outcome = flowclas(*COMMANDS["detect"](bundle, tmp_path), outputs=["out"])
    expect_refused(outcome, f"{artefact} was not built on this machine", "flowclas export", "--force")
    outcome = flowclas(*COMMANDS["detect_auto"](bundle, tmp_path), outputs=["out"])
    assert outcome.code == 0 and "warning:" in outcome.stderr and "was not built on this machine" in outcome.stderr
    assert "falling back to eager torch" in outcome.stderr
    outcome = flowclas("export", "--model", bundle, "--format", "torch-export", "--height", SIZE[0], "--width", SIZE[1],
                       outputs=["bundle/engines", "other-machine"])
    expect_refused(outcome, "was not built on this machine", "--force")
    outcome = flowclas("export", "--model", bundle, "--format", "torch-export", "--height", SIZE[0], "--width", SIZE[1],
                       "--force", outputs=["bundle/engines", "other-machine"])
    assert outcome.code == 0, outcome.stderr
    outcome = flowclas(*COMMANDS["detect"](bundle, tmp_path), outputs=["out"])
    assert outcome.code == 0, outcome.stderr


def test_altered_artefact_is_an_error_under_auto(flowclas, bundle, tmp_path):
    artefact = _artefact(bundle)
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))
    expect_refused(flowclas(*COMMANDS["detect_auto"](bundle, tmp_path), outputs=["out"]), "corrupt or was altered")


RECORDS = {
    "garbage": lambda p: p.write_bytes(b"\xff\xfe not json"),
    "json_list": lambda p: p.write_text("[]"),
    "artefacts_not_list": lambda p: p.write_text('{"artefacts": {"a": 1}}'),
    "bad_entries": lambda p: p.write_text('{"artefacts": [1, {"sha256": "x"}, {"sha256": "%s", "key": []}]}' % ("0" * 64)),
    "deeply_nested": lambda p: p.write_text("[" * 5000 + "]" * 5000),
    "huge": lambda p: p.write_bytes(b" " * (17 * 2**20)),
    "dev_zero": lambda p: p.symlink_to("/dev/zero"),
    "folder": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_bad_record_counts_as_empty(flowclas, bundle, tmp_path, monkeypatch, case):
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv(trust.STATE_ENV, str(state))
    RECORDS[case](state / trust.RECORD)
    outcome = flowclas(*COMMANDS["detect"](bundle, tmp_path), outputs=["out"])
    expect_refused(outcome, "was not built on this machine")
    if case != "bad_entries":
        assert "ignoring the artefact record" in outcome.stderr


def test_unwritable_record_is_one_line(flowclas, bundle, tmp_path, monkeypatch):
    (tmp_path / "state").write_text("a file where the state folder should be")
    monkeypatch.setenv(trust.STATE_ENV, str(tmp_path / "state"))
    outcome = flowclas("export", "--model", bundle, "--format", "torch-export", "--height", SIZE[0], "--width", SIZE[1],
                       "--force", outputs=["bundle/engines"])
    expect_refused(outcome, "cannot record it", trust.STATE_ENV)


# ---- export --force beside cache entries flowclas did not write; symlinks out of the bundle


def _stale_name(bundle: Path) -> Path:
    folder = artefact_dir(bundle, _key(bundle))
    return folder.with_name(folder.name.rsplit("-", 1)[0] + "-0123456789ab")


ENTRIES = {
    "file": lambda e, outside: e.write_text("user notes"),
    "symlink_to_folder": lambda e, outside: e.symlink_to(outside, target_is_directory=True),
    "symlink_to_file": lambda e, outside: e.symlink_to(outside / "keep.txt"),
    "folder_without_manifest": lambda e, outside: (e.mkdir(), (e / "keep.txt").write_text("mine")),
    "manifest_plus_user_file": lambda e, outside: (shutil.copytree(artefact_dir(e.parent.parent, _key(e.parent.parent)), e),
                                                   (e / "keep.txt").write_text("mine")),
}


@pytest.mark.parametrize("case", list(ENTRIES))
def test_force_keeps_entries_it_did_not_write(flowclas, bundle, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    ENTRIES[case](_stale_name(bundle), outside)
    outcome = flowclas("export", "--model", bundle, "--format", "torch-export", "--height", SIZE[0], "--width", SIZE[1],
                       "--force")
    expect_refused(outcome, str(_stale_name(bundle)), "move it away")


@pytest.mark.parametrize("case", ["engines_symlink", "engines_file"])
def test_engines_folder_must_be_real(flowclas, bundle, tmp_path, case):
    outside = tmp_path / "outside"
    shutil.move(bundle / "engines", outside)
    if case == "engines_symlink":
        (bundle / "engines").symlink_to(outside, target_is_directory=True)
    else:
        (bundle / "engines").write_text("not a folder")
    for argv in (COMMANDS["detect"](bundle, tmp_path),
                 ("export", "--model", bundle, "--format", "torch-export", "--height", SIZE[0], "--width", SIZE[1], "--force")):
        expect_refused(flowclas(*argv, outputs=["out"]), "bundle/engines is a")


def test_force_replaces_entries_it_wrote(flowclas, bundle, tmp_path, state):
    """A stale entry carrying our manifest is ours: --force removes it and rebuilds."""
    stale = _stale_name(bundle)
    shutil.copytree(artefact_dir(bundle, _key(bundle)), stale)
    outcome = flowclas("export", "--model", bundle, "--format", "torch-export", "--height", SIZE[0], "--width", SIZE[1],
                       "--force", outputs=["bundle/engines"])
    assert outcome.code == 0, outcome.stderr
    assert not stale.exists() and _artefact(bundle).is_file()


# ---- manifests: a JSON list, garbage, huge, nested, lying about files; artefact files that are not files


MANIFESTS = {
    "json_list": lambda m, a: m.write_text("[1, 2]"),
    "garbage": lambda m, a: m.write_bytes(b"\x00\xff{{{"),
    "huge": lambda m, a: m.write_bytes(b"{" + b" " * (17 * 2**20) + b"}"),
    "deeply_nested": lambda m, a: m.write_text('{"key": ' + "[" * 5000 + "]" * 5000 + "}"),
    "key_is_list": lambda m, a: m.write_text('{"key": [], "files": {"model.pt2": "0"}}'),
    "files_outside": lambda m, a: m.write_text(json.dumps({**json.loads(m.read_text()), "files": {"../../x": "0"}})),
    "pad_multiple_zero": lambda m, a: m.write_text(json.dumps({**json.loads(m.read_text()), "pad_multiple": 0})),
    "pad_multiple_text": lambda m, a: m.write_text(json.dumps({**json.loads(m.read_text()), "pad_multiple": "8"})),
    "manifest_dev_zero": lambda m, a: (m.unlink(), m.symlink_to("/dev/zero")),
    "manifest_fifo": lambda m, a: (m.unlink(), os.mkfifo(m)),
    "artefact_dev_zero": lambda m, a: (a.unlink(), a.symlink_to("/dev/zero")),
    "artefact_fifo": lambda m, a: (a.unlink(), os.mkfifo(a)),
    "artefact_folder": lambda m, a: (a.unlink(), a.mkdir()),
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_bad_manifest_is_one_line(flowclas, bundle, tmp_path, case):
    artefact = _artefact(bundle)
    MANIFESTS[case](artefact.parent / MANIFEST, artefact)
    expect_refused(flowclas(*COMMANDS["detect_auto"](bundle, tmp_path), outputs=["out"]), str(artefact.parent))
