"""stvg_ros: spatio-temporal video grounding (STVG-R1) for ROS 2.

`stvg_ros.core` and the other sub-packages except `stvg_ros.nodes` import without ROS.
"""

__version__ = "0.1.0"
