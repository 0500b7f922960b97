"""``flowclas bench`` on a tiny bundle writes JSON and markdown with the expected fields."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize_head, small_config

from flowclas_ros.commands.main import main
from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, save_bundle


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    encoder = EncoderConfig(name="efficientnet_lite0", layers=[1], weights=None, input_size=(32, 48))
    net = randomize_head(FlowCLASNet(small_config(encoder=encoder, flow=FlowConfig(steps=1, hidden_ratio=0.5))))
    return save_bundle(net, tmp_path / "tiny")


def test_bench_writes_json_and_markdown(bundle, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--model", str(bundle), "--backends", "torch,torch-export,tensorrt", "--batch-sizes", "1,2",
            "--warmup", "1", "--iters", "3", "--peak-tflops", "0.5", "--output", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["machine"]["versions"]["torch"] == torch.__version__
    assert report["machine"]["cpu"] and report["settings"]["iters"] == 3
    assert report["flops_per_frame"]["32x48"] > 0
    rows = {(r["kind"], r["backend"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(k, b, n) for k in ("model",) for b in ("torch", "torch-export") for n in (1, 2)} | {
        ("pipeline", "torch", 1), ("pipeline", "torch-export", 1)}
    model = rows[("model", "torch-export", 2)]
    assert model["p50_ms"] <= model["p90_ms"] <= model["p99_ms"]
    assert model["throughput_fps"] == pytest.approx(2000 / model["p50_ms"], rel=0.01)
    assert model["max_abs_diff_vs_torch"] < 1e-4
    assert model["floor_ms_per_frame"] == pytest.approx(report["flops_per_frame"]["32x48"] / 0.5e12 * 1e3, rel=0.01)
    assert rows[("model", "torch", 1)]["speedup_vs_torch"] == 1.0
    assert rows[("pipeline", "torch-export", 1)]["pipeline_over_model"] > 0
    assert [s["backend"] for s in report["skipped"]] == ["tensorrt"]
    table = (out / "bench.md").read_text()
    assert "| kind | backend | HxW | batch | p50 ms |" in table and "| pipeline | torch-export | 32x48 | 1 |" in table
    assert "skipped tensorrt" in table and f"torch {torch.__version__}" in table
    assert str(out / "bench.json") in capsys.readouterr().out


def test_bench_under_load_with_precisions(bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench"
    argv = ["bench", "--model", str(bundle), "--backends", "torch,onnxruntime,onnxruntime:int8,torch:int8",
            "--warmup", "1", "--iters", "2", "--load", "--load-threads", "1", "--no-pipeline", "--output", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "bench.json").read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert set(rows) == {"torch", "onnxruntime"}  # no calibration frames for int8; torch refuses int8
    reasons = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert "int8 calibration needs inlier frames" in reasons["onnxruntime:int8"]
    assert "torch backend does not run int8" in reasons["torch:int8"]
    for r in rows.values():
        assert r["loaded_p50_ms"] > 0 and r["loaded_over_idle"] == pytest.approx(r["loaded_p50_ms"] / r["p50_ms"], rel=0.02)
        assert r["p50_over_floor"] > 0  # floor from the measured matmul peak
    assert report["settings"]["load"]["threads"] == 1 and report["settings"]["peak_source"].startswith("measured")
    (first, *_), table = report["summary"], (out / "bench.md").read_text()
    assert first["backend"] == "torch" and first["best_batch"] == 1 and first["loaded_over_idle"] is not None
    assert "## Summary" in table and "loaded/idle" in table and "--load" in report["command"]


def test_bench_rejects_bad_options(bundle, tmp_path, capsys):
    assert main(["bench", "--model", str(bundle), "--backends", "warp", "--output", str(tmp_path)]) == 1
    assert "unknown backend(s) warp" in capsys.readouterr().err
    assert main(["bench", "--model", str(bundle), "--backends", "torch:int4", "--output", str(tmp_path)]) == 1
    assert "unknown precision in torch:int4" in capsys.readouterr().err
    assert main(["bench", "--model", str(bundle), "--resolutions", "480by640", "--output", str(tmp_path)]) == 1
    assert "HEIGHTxWIDTH" in capsys.readouterr().err


def test_a_resolution_too_large_for_memory_is_a_skipped_row(bundle, tmp_path, monkeypatch):
    import flowclas_ros.bench as bench

    real = bench.bench_resolution

    def short_of_memory(args, net, config, specs, batches, size, *rest):
        if tuple(size) == (64, 96):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: "
                               "you tried to allocate 2147483648 bytes.")
        return real(args, net, config, specs, batches, size, *rest)

    monkeypatch.setattr(bench, "bench_resolution", short_of_memory)
    out = tmp_path / "bench"
    argv = ["bench", "--model", str(bundle), "--backends", "torch", "--resolutions", "32x48,64x96", "--warmup", "1",
            "--iters", "2", "--peak-tflops", "0.5", "--no-pipeline", "--output", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "bench.json").read_text())
    assert {r["resolution"] for r in report["results"]} == {"32x48"}
    assert [s["resolution"] for s in report["skipped"]] == ["64x96"] and "out of memory" in report["skipped"][0]["reason"]


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_bench_refuses_a_peak_that_is_not_a_positive_number(bundle, tmp_path, value):
    with pytest.raises(SystemExit):
        main(["bench", "--model", str(bundle), "--peak-tflops", value, "--output", str(tmp_path / "b")])
