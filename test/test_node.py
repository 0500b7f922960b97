"""The ROS node: its ROS-free logic (flowclas_ros.ros.parameters, runtime.scheduling and runtime.stats, config, launch files) always; a
launch_testing smoke test of the real node where rclpy exists."""

from __future__ import annotations

import ast
import importlib.util
import threading
from pathlib import Path

import pytest
import yaml

from flowclas_ros.ros.parameters import PARAMETERS, check_parameters
from flowclas_ros.runtime.scheduling import LatestSlot
from flowclas_ros.runtime.stats import FrameStats, Latencies, RateMeter

ROOT = Path(__file__).resolve().parents[1]
HAVE_RCLPY = importlib.util.find_spec("rclpy") is not None and importlib.util.find_spec("launch_testing") is not None


def test_latest_slot_replaces_waiting_item_and_never_queues():
    slot = LatestSlot()
    assert slot.put("a") is False
    assert slot.put("b") is True  # "a" dropped
    assert slot.put("c") is True
    assert slot.take(timeout=0) == "c"
    assert slot.take(timeout=0.01) is None  # nothing queued behind "c"


def test_latest_slot_wakes_a_blocked_worker_and_closes():
    slot = LatestSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    slot.put(7)
    worker.join(5)
    assert got == [7]
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    slot.close()
    worker.join(5)
    assert not worker.is_alive() and got == [7, None]


def test_rate_meter_and_latencies():
    meter = RateMeter(window=2.0)
    for i in range(11):
        meter.tick(i * 0.1)  # 10 Hz
    assert meter.rate(1.0) == pytest.approx(10.0)
    assert meter.rate(10.0) == 0.0  # all samples left the window
    lat = Latencies(maxlen=3)
    for s in (1.0, 0.010, 0.020, 0.030):
        lat.add(s)
    p = lat.percentiles_ms()
    assert len(lat) == 3 and p["max"] == pytest.approx(30.0) and p["p50"] == pytest.approx(20.0)


def test_frame_stats_values_for_diagnostics():
    stats = FrameStats(backend="torch", device="cpu")
    assert stats.level()[0] == 0
    for t in range(3):
        stats.receive(float(t))
    assert stats.reject("data") == 1
    stats.process()
    stats.publish(3.0, latency=0.05)
    values = stats.values(now=0.0)
    assert values["backend"] == "torch" and values["rejected"] == "1" and values["latency_p50_ms"] == "50.0"
    assert stats.level()[0] == 1


@pytest.mark.parametrize(
    "changes, refused",
    [
        ({"threshold": 0.4}, None),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "high"}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"overlay": False}, None),
        ({"overlay": 1}, "overlay"),
        ({"model": "/other"}, "restart"),
        ({"use_sim_time": True}, None),
    ],
)
def test_runtime_parameter_changes_are_range_checked(changes, refused):
    reason = check_parameters(changes)
    assert (reason is None) if refused is None else (refused in reason)


def test_config_yaml_matches_parameter_table():
    config = yaml.safe_load((ROOT / "config" / "detector.yaml").read_text())
    params = config["/**/flowclas_detector"]["ros__parameters"]
    assert set(params) == set(PARAMETERS)
    assert check_parameters(params, running=False) is None
    for name, spec in PARAMETERS.items():
        assert type(params[name]) is type(spec.default), name


def test_design_doc_parameter_table_matches_parameter_table():
    import re

    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", (ROOT / "docs" / "design.md").read_text(), re.M)
    documented = {name: default.strip().strip('`"') for name, default in rows if name in PARAMETERS}
    assert set(documented) == set(PARAMETERS)
    for name, spec in PARAMETERS.items():
        default = spec.default
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        assert documented[name].split(" ")[0] in (expected, f"{expected}.0") or (default == "" and not
                                                                                documented[name].split(" ")[0]), name


@pytest.mark.parametrize("name", ["detector.launch.py", "multi_camera.launch.py"])
def test_launch_files_parse_and_declare_arguments(name):
    tree = ast.parse((ROOT / "launch" / name).read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    declared = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    }
    assert {"model", "config_file", "use_compressed"} <= declared


def test_node_module_is_only_rclpy_adapter():
    """Only modules of the ros/ subpackage import rclpy."""
    package = ROOT / "flowclas_ros"
    importers = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if any(
            isinstance(n, (ast.Import, ast.ImportFrom))
            and any((a.name if isinstance(n, ast.Import) else n.module or "").startswith("rclpy") for a in n.names)
            for n in ast.walk(ast.parse(p.read_text()))
        )
    }
    assert importers and all(name.startswith("ros/") for name in importers), importers


@pytest.mark.skipif(not HAVE_RCLPY, reason="rclpy and launch_testing (a ROS 2 install) are not available")
def test_launch_smoke(tmp_path, small_net):
    """Start the node with a tiny bundle, publish one image, expect every output once."""
    import subprocess
    import sys

    from flowclas_ros.model import save_bundle

    bundle = save_bundle(small_net, tmp_path / "model")
    script = Path(__file__).with_name("launch_smoke.py")
    result = subprocess.run(
        [sys.executable, "-m", "launch_testing.launch_test", str(script), f"model:={bundle}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_frame_stats_warn_only_for_recent_rejections_and_plausible_stamp_age():
    clock = [100.0]
    stats = FrameStats(backend="torch", reject_window=10.0, clock=lambda: clock[0])
    stats.receive(0.0)
    stats.process()
    stats.reject("data")
    assert stats.level()[0] == 1
    clock[0] = 111.0
    assert stats.level() == (0, "running")  # one bad frame long ago: OK again
    stats.publish(1.0, latency=0.02, stamp_age=1.8e9)  # unsynchronised camera clock: not kept
    assert "stamp_age_ms" not in stats.values(1.0) and stats.values(1.0)["latency_p50_ms"] == "20.0"
    stats.publish(2.0, latency=0.02, stamp_age=0.25)
    assert stats.values(2.0)["stamp_age_ms"] == "250.0"


def test_parameter_defaults_are_sensible():
    assert PARAMETERS["min_hazard_area"].default == 16
    assert PARAMETERS["max_input_pixels"].default == 4096 * 3072
    assert check_parameters({"max_input_pixels": 0}, running=False) is not None
