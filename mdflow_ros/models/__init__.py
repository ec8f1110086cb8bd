"""The networks: the FastFlowNet teacher and the RAFT student, shared by training, export and inference."""
from mdflow_ros.models.fastflownet import FastFlowNet
from mdflow_ros.models.raft import RAFT

__all__ = ["FastFlowNet", "RAFT"]
