"""Batched closed-loop simulation: dynamics, agent state, driving metrics, background agents, simulator."""
from __future__ import annotations

from trafficbots_gym.simulation.background import BACKGROUNDS, make_background
from trafficbots_gym.simulation.idm import IDMParams
from trafficbots_gym.simulation.metrics import LoggedPath, MapGeometry
from trafficbots_gym.simulation.simulator import BatchedSimulator, StepOutput
from trafficbots_gym.simulation.state import AgentState

__all__ = ["AgentState", "BACKGROUNDS", "BatchedSimulator", "IDMParams", "LoggedPath", "MapGeometry", "StepOutput",
           "make_background"]
