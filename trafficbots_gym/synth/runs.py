"""One synthetic run: a seeded network, demand and SUMO simulation, recorded with its road map.

``sample_run_spec(seed)`` draws everything a run needs from ``numpy.random.default_rng(seed)``;
``execute_run(spec)`` builds it in a temporary folder and returns the road map and the log. The same
seed gives the same network, routes and trajectories (SUMO and the SUMO tools are all seeded).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trafficbots_gym.synth.demand import DemandSpec, build_routes, sample_demand_spec
from trafficbots_gym.synth.networks import NetworkSpec, build_network, sample_network_spec
from trafficbots_gym.synth.netxml import parse_net
from trafficbots_gym.synth.roadmap import RoadMap, build_road_map
from trafficbots_gym.synth.simulate import SimLog, SimSpec, simulate

WARMUP: float = 90.0
"""Seconds simulated before recording, so the network fills with traffic."""


@dataclass(frozen=True)
class RunSpec:
    seed: int
    network: NetworkSpec
    demand: DemandSpec
    sim: SimSpec

    @property
    def tag(self) -> str:
        """Short unique name of the run (used in scenario ids)."""
        return f"sumo-{self.network.kind}-{self.seed:010d}"


def sample_run_spec(seed: int, duration: float) -> RunSpec:
    """A run of ``duration`` recorded seconds on a random network with random demand."""
    if seed < 0:
        raise ValueError(f"run seed must be >= 0, got {seed}")
    rng = np.random.default_rng(seed)
    sumo_seed = int(rng.integers(0, 2**31 - 1))
    network = sample_network_spec(rng, sumo_seed)
    demand = sample_demand_spec(rng, sumo_seed, end=WARMUP + duration, sidewalks=network.sidewalks)
    return RunSpec(seed, network, demand, SimSpec(sumo_seed, WARMUP, duration))


def execute_run(spec: RunSpec, workdir: Path | None = None) -> tuple[RoadMap, SimLog]:
    """Build the network and routes of ``spec``, simulate, and return (road map, log).

    ``workdir`` keeps the SUMO files (network, routes); by default a temporary folder is used.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="trafficbots-synth-") as tmp:
            return execute_run(spec, Path(tmp))
    net_file = build_network(spec.network, workdir)
    road_map = build_road_map(parse_net(net_file))
    routes = build_routes(net_file, spec.demand, workdir)
    return road_map, simulate(net_file, routes, road_map.tl_links, spec.sim)
