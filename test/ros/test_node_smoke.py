"""flowclas_node on a real ROS 2 graph: frames in on /image, scores out with the input header."""

import pytest

pytestmark = pytest.mark.ros


def test_three_frames_give_three_scores_with_the_input_header(node_process, driver):
    scores = driver.subscribe("/anomaly_score")
    driver.subscribe("/label_info")
    node_process()
    label_info = driver.wait_for("/label_info", 1)[0]
    assert {c.class_name for c in label_info.class_map} == {"inlier", "anomaly"}

    sent = [driver.image(frame_id=f"camera_{i}") for i in range(3)]
    # one at a time: the node keeps only the latest waiting frame
    replies = [driver.exchange("/image", image, "/anomaly_score")[0] for image in sent]

    assert len(scores) >= 3
    for image, score in zip(sent, replies):
        assert (score.height, score.width, score.encoding) == (480, 640, "32FC1")
        assert score.step == 640 * 4 and len(score.data) == 480 * 640 * 4
        assert score.header.frame_id == image.header.frame_id
        assert (score.header.stamp.sec, score.header.stamp.nanosec) == (image.header.stamp.sec, image.header.stamp.nanosec)
