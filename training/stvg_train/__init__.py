"""stvg_train: GRPO training for STVG-R1 on the robot's own perception, renderer and answer parser."""

__version__ = "0.1.0"
