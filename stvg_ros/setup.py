"""ament_python package stvg_ros (colcon) and the pip-installable stvg_ros Python package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "stvg_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    package_data={"stvg_ros.core": ["*.txt", "*.gbnf"], "stvg_ros": ["py.typed", "models/*.yaml", "models/*/*.gguf"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="stvg_ros maintainers",
    maintainer_email="maintainers@stvg-ros.dev",
    description="Spatio-temporal video grounding (STVG-R1) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "stvg-ros = stvg_ros.cli.main:main",
            # `ros2 run stvg_ros <node>` executables
            "tracker_node = stvg_ros.nodes.tracker_node:main",
            "overlay_node = stvg_ros.nodes.overlay_node:main",
            "grounding_node = stvg_ros.nodes.grounding_node:main",
            "player_node = stvg_ros.nodes.player_node:main",
        ],
    },
)
