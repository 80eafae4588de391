"""ROS-free contracts shared by perception, grounding, evaluation and training."""
