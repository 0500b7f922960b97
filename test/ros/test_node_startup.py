"""``flowclas_node`` at the edges of its life: bad startup input gives one line, signals during
startup exit cleanly, and sim time without /clock keeps /diagnostics alive."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.ros


def _ended(node, timeout: float = 60.0) -> tuple[int, str]:
    code = node.process.wait(timeout=timeout)
    return code, node.output()


@pytest.mark.parametrize(
    "params, args, params_file, expected",
    [
        ({"threshold": 2.0}, None, None, "threshold out of range"),
        ({"threads": "abc"}, None, None, "expecting type 'INTEGER'"),
        ({"device": "bogus"}, None, None, "device must be cpu, cuda or cuda:N"),
        ({"device": "cuda:7"}, None, None, "device 'cuda:7'"),
        (None, None, "missing.yaml", "Couldn't parse params file"),
        (None, ["--cameras", "front", "/front"], None, "namespace '/front' given twice"),
        (None, ["--cameras", "bad ns"], None, "Invalid namespace"),
    ],
    ids=["out-of-range", "wrong-type", "bogus-device", "absent-gpu", "missing-params-file", "duplicate-camera",
         "bad-namespace"],
)
def test_bad_startup_input_is_one_line_and_nonzero(node_process, tmp_path, params, args, params_file, expected):
    node = node_process(params, args=args, ready=None, params_file=tmp_path / params_file if params_file else None)
    code, out = _ended(node)
    errors = [line for line in out.splitlines() if line.startswith("flowclas_node: error:")]
    assert code != 0 and len(errors) == 1 and expected in errors[0], out
    assert "Traceback" not in out and ", at /" not in errors[0], out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_while_starting_exits_zero_quietly(node_process, sig):
    node = node_process(ready=None)
    time.sleep(1.5)  # torch and rclpy still loading: a launch file tearing down early
    assert node.process.poll() is None
    code = node.stop(sig, timeout=20)
    out = node.output()
    assert code == 0 and "Traceback" not in out, out


def test_sim_time_without_clock_still_publishes_diagnostics(node_process, driver):
    diagnostics = driver.subscribe("/diagnostics")
    node = node_process({"use_sim_time": True})
    driver.wait_for("/diagnostics", 1, timeout=20)
    assert diagnostics[0].status[0].hardware_id == "cpu"
    assert "no /clock message has arrived" in node.output()
