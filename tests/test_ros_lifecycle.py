"""A grounding node whose model file is missing: configure fails clearly, the process keeps running,
and the node can be fixed through its parameters and lifecycle services without a restart."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.ros_support import NodeProcess, RosClient, compressed_msg, tracks_msg, wait_until

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402

from stvg_ros_msgs.msg import TrackedObjectArray  # noqa: E402
from stvg_ros_msgs.srv import Ground  # noqa: E402

NAMESPACE = "/lifecycle_test"
T0 = 1_700_000_000 * 1_000_000_000


def _string_param(name: str, value: str) -> Parameter:
    return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value))


def test_missing_model_fails_configure_clearly_and_the_node_recovers(tiny_vlm, tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    node = NodeProcess.python(
        ["-m", "stvg_ros.nodes.grounding_node", "--ros-args", "-r", f"__ns:={NAMESPACE}",
         "-p", f"model:={missing}", "-p", "n_gpu_layers:=0", "-p", "n_threads:=1"],
        tmp_path / "node.log",
    )  # fmt: skip
    client = RosClient(namespace=NAMESPACE)
    try:
        assert node.wait_for_log("configure failed", 60), node.log()
        log = node.log()
        assert f"model file not found: {missing}" in log
        assert "Traceback" not in log
        get_state = client.service(GetState, "grounding_node/get_state", timeout_s=20)
        assert client.call(get_state, GetState.Request(), 10, idempotent=True).current_state.id == State.PRIMARY_STATE_UNCONFIGURED
        assert node.alive()
        # No query interface while unconfigured.
        assert not client.node.create_client(Ground, "ground").wait_for_service(timeout_sec=1.0)

        # Fix the parameters and bring the node up through its lifecycle services.
        set_params = client.service(SetParameters, "grounding_node/set_parameters", timeout_s=10)
        fixed = [
            _string_param("model", str(tiny_vlm.gguf_q8_0)),
            _string_param("mmproj", str(tiny_vlm.mmproj_f32)),
            _string_param("image_transport", "compressed"),  # read on configure, like every parameter
        ]
        assert all(r.successful for r in client.call(set_params, SetParameters.Request(parameters=fixed), 10, idempotent=True).results)
        change = client.service(ChangeState, "grounding_node/change_state", timeout_s=10)
        for transition in (Transition.TRANSITION_CONFIGURE, Transition.TRANSITION_ACTIVATE):
            request = ChangeState.Request(transition=Transition(id=transition))
            assert client.call(change, request, 60).success, node.log()
        assert client.call(get_state, GetState.Request(), 10, idempotent=True).current_state.id == State.PRIMARY_STATE_ACTIVE
        ground = client.service(Ground, "ground", timeout_s=20)
        answer = client.call(ground, Ground.Request(query="the red circle"), 30).result
        assert not answer.success and f"{NAMESPACE}/image/compressed" in answer.message

        # Compressed camera input (JPEG) now feeds the buffer.
        image_pub = client.node.create_publisher(CompressedImage, "image/compressed", 10)
        tracks_pub = client.node.create_publisher(TrackedObjectArray, "tracks", 50)
        assert wait_until(lambda: image_pub.get_subscription_count() and tracks_pub.get_subscription_count(), 10)
        for i in range(10):
            stamp_ns = T0 + i * 100_000_000
            rgb = np.full((120, 160, 3), 80, np.uint8)
            rgb[30:60, 20 + 5 * i : 50 + 5 * i] = (220, 40, 40)
            image_pub.publish(compressed_msg(rgb, stamp_ns))
            tracks_pub.publish(tracks_msg({7: (20.0 + 5 * i, 30.0, 50.0 + 5 * i, 60.0)}, stamp_ns))
            time.sleep(0.03)
        time.sleep(0.5)
        answer = client.call(ground, Ground.Request(query="the red square", reasoning=2), 30).result
        assert answer.success and answer.target_id == 7, answer.message
    finally:
        client.close()
        node.stop()
