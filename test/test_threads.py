"""CPU thread settings: the count (affinity, cgroup quota, OMP_NUM_THREADS, flags, node
parameter) and the OpenMP wait policy the entry points set before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flowclas_ros.commands.main import build_parser
from flowclas_ros.ros.parameters import PARAMETERS, check_parameters
from flowclas_ros.runtime import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    threads._configured = None


def test_usable_cpus_follows_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert threads.usable_cpus() == 4
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 1.5)  # 150 ms per 100 ms
    assert threads.usable_cpus() == 2
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 0.2)
    assert threads.usable_cpus() == 1


def test_cgroup_quota_files(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert threads.cgroup_cpu_quota(tmp_path) == 3.0
    assert threads.cgroup_cpu_quota(tmp_path / "missing") is None


def test_auto_threads_honours_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads, "usable_cpus", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.auto_threads() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.auto_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # nested levels: the outer one
    assert threads.auto_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert threads.auto_threads() == 6


def test_configure_threads_sets_torch_and_onnxruntime_count(keep_threads, monkeypatch):
    monkeypatch.setattr(threads, "auto_threads", lambda: 3)
    assert threads.configure_threads(2) == 2 and torch.get_num_threads() == 2
    assert threads.configured_threads() == 2
    assert threads.configure_threads(0) == 3 and torch.get_num_threads() == 3
    assert threads.configure_threads(None) == 3
    for bad in (-1, 257, 1.5, True, "2"):
        with pytest.raises(ValueError, match="0..256"):
            threads.configure_threads(bad)


def test_onnxruntime_session_gets_the_configured_count(keep_threads, small_net, tmp_path):
    pytest.importorskip("onnxruntime")
    from flowclas_ros.model import save_bundle
    from flowclas_ros.runtime.backends import create_backend

    bundle = tmp_path / "bundle"
    save_bundle(small_net, bundle)
    threads.configure_threads(1)
    backend = create_backend("onnxruntime", bundle, net=small_net)
    assert backend.session.get_session_options().intra_op_num_threads == 1
    backend = create_backend("onnxruntime", bundle, net=small_net, threads=2)
    assert backend.session.get_session_options().intra_op_num_threads == 2


def test_prepare_environment_keeps_user_values(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert threads.prepare_environment() is False  # torch is loaded in the test process
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.prepare_environment()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("command", ["detect", "eval", "replay", "bench", "train", "demo"])
def test_every_torch_command_takes_threads(command):
    parser = build_parser()
    required = {"detect": ["--model", "m", "--input", "i", "--output", "o"],
                "eval": ["--model", "m", "--dataset", "folder", "--root", "r", "--output", "o"],
                "replay": ["--model", "m", "--bag", "b", "--image-topic", "t", "--output", "o"],
                "bench": ["--model", "m"], "train": ["--config", "synthetic", "--output", "o"], "demo": []}[command]
    assert parser.parse_args([command, *required]).threads == 0
    assert parser.parse_args([command, *required, "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required, "--threads", "300"])


def test_node_threads_parameter():
    spec = PARAMETERS["threads"]
    assert spec.default == 0 and spec.range == (0, 256) and not spec.dynamic
    assert check_parameters({"threads": 4}, running=False) is None
    assert "threads must be in" in check_parameters({"threads": 257}, running=False)
    assert "restart" in check_parameters({"threads": 4}, running=True)


def _openmp_settings(code: str) -> str:
    """stderr of ``code`` run with libgomp printing its settings when torch loads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_DISPLAY_ENV"] = "verbose"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stderr


def _gomp_spins(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if "GOMP_SPINCOUNT" in line:
            return line.split("=")[1].strip().strip("'")
    return None


def test_entry_points_make_openmp_threads_sleep_instead_of_spinning():
    """OpenMP (libgomp) reads the wait policy when torch loads: the entry points must set it first."""
    plain = _gomp_spins(_openmp_settings("import torch"))
    if plain is None:
        pytest.skip("torch's OpenMP is not libgomp (no GOMP_SPINCOUNT display)")
    assert plain != "0"  # the default busy-waits
    cli = _openmp_settings("""
        import sys
        import flowclas_ros.commands.main as m
        assert "torch" not in sys.modules
        try:
            m.main(["export", "--help"])  # building the parser imports every command (and torch)
        except SystemExit:
            pass
        assert "torch" in sys.modules
    """)
    assert _gomp_spins(cli) == "0"
    node = _openmp_settings("""
        import sys, types
        fake = types.ModuleType("flowclas_ros.ros.node")  # rclpy may be missing: the node's torch import alone
        def main(args):
            import torch
            return 0
        fake.main = main
        sys.modules["flowclas_ros.ros.node"] = fake
        import flowclas_ros.ros.entry as entry
        assert "torch" not in sys.modules
        assert entry.main([]) == 0
    """)
    assert _gomp_spins(node) == "0"
