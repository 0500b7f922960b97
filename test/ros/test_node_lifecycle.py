"""``flowclas_node --managed``: the detector as a lifecycle node, driven through the real
lifecycle services (lifecycle_msgs/ChangeState, GetState)."""

from __future__ import annotations

import signal
import time

import pytest

pytestmark = pytest.mark.ros

NODE = "/flowclas_detector"


def _call(driver, service_type, name, request, timeout=30.0):
    client = driver.node.create_client(service_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"no service {name}"
    future = client.call_async(request)
    deadline = time.monotonic() + timeout
    while not future.done():
        assert time.monotonic() < deadline, f"{name} did not answer"
        time.sleep(0.02)
    return future.result()


def _transition(driver, transition_id):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request(transition=Transition(id=transition_id))
    return _call(driver, ChangeState, f"{NODE}/change_state", request).success


def _state(driver):
    from lifecycle_msgs.srv import GetState

    return _call(driver, GetState, f"{NODE}/get_state", GetState.Request()).current_state.label


def _subscribers(driver, topic, want, timeout=10.0):
    deadline = time.monotonic() + timeout
    while driver.node.count_subscribers(topic) != want:
        assert time.monotonic() < deadline, f"{driver.node.count_subscribers(topic)} subscribers on {topic}, want {want}"
        time.sleep(0.05)


def test_managed_node_through_lifecycle_services(node_process, driver):
    from lifecycle_msgs.msg import Transition

    scores = driver.subscribe("/anomaly_score")
    node = node_process(args=["--managed"], ready=r"unconfigured: waiting")
    assert _state(driver) == "unconfigured"
    assert driver.node.count_subscribers("/image") == 0
    # a transition the state does not have is refused, and the node lives on (rclpy#1209)
    assert not _transition(driver, Transition.TRANSITION_ACTIVATE)
    assert _state(driver) == "unconfigured" and "transition activate refused" in node.output()

    assert _transition(driver, Transition.TRANSITION_CONFIGURE)
    assert _state(driver) == "inactive" and "configured: model loaded" in node.output()
    assert not _transition(driver, Transition.TRANSITION_CONFIGURE)  # twice: refused, still inactive
    assert _state(driver) == "inactive"
    driver.subscribe("/label_info")
    driver.wait_for("/label_info", 1)  # outputs exist once configured
    assert driver.node.count_subscribers("/image") == 0  # ...but no input until active

    for round_ in range(2):  # deactivate keeps the model: the second activation loads nothing
        assert _transition(driver, Transition.TRANSITION_ACTIVATE)
        assert _state(driver) == "active"
        driver.exchange("/image", driver.image(frame_id=f"round_{round_}"), "/anomaly_score")
        assert _transition(driver, Transition.TRANSITION_DEACTIVATE)
        assert _state(driver) == "inactive"
        _subscribers(driver, "/image", 0)
    assert node.output().count("configured: model loaded") == 1

    assert _transition(driver, Transition.TRANSITION_CLEANUP)
    assert _state(driver) == "unconfigured" and "cleaned up: model unloaded" in node.output()
    assert {s.header.frame_id for s in scores} == {"round_0", "round_1"}
    code = node.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in node.output(), node.output()
