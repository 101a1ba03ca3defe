"""Traffic demand for a generated network: vehicle types, random trips and routes (randomTrips + duarouter).

Motorised traffic (cars of several sizes, vans, trucks, buses) shares one vehicle-type
distribution; cyclists and pedestrians get their own trips. Every vehicle type follows IDM with a
per-vehicle speed factor, which gives smooth, physically plausible accelerations at 10 Hz.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trafficbots_gym.synth.sumo_tools import run

# (id, vClass, probability, length, width, height, accel, decel, max speed) of motorised vehicles.
VEHICLE_TYPES: tuple[tuple[str, str, float, float, float, float, float, float, float], ...] = (
    ("car_small", "passenger", 0.31, 4.0, 1.75, 1.45, 2.8, 4.5, 50.0),
    ("car_mid", "passenger", 0.34, 4.6, 1.85, 1.50, 2.6, 4.5, 50.0),
    ("car_large", "passenger", 0.22, 5.1, 2.00, 1.75, 2.4, 4.5, 50.0),
    ("van", "delivery", 0.08, 6.0, 2.10, 2.40, 2.0, 4.0, 36.0),
    ("truck", "truck", 0.03, 9.0, 2.50, 3.40, 1.3, 4.0, 30.0),
    ("bus", "bus", 0.02, 12.0, 2.55, 3.20, 1.2, 4.0, 25.0),
)
BIKE_SIZE: tuple[float, float, float] = (1.8, 0.65, 1.7)
PERSON_SIZE: tuple[float, float, float] = (0.6, 0.6, 1.75)


@dataclass(frozen=True)
class DemandSpec:
    """Density and mix of the traffic of one run."""

    seed: int
    end: float
    """Last departure time (s)."""
    vehicle_density: float
    """Vehicles inserted per hour and lane-km."""
    bike_period: float
    """Mean seconds between two cyclist departures (0: no cyclists)."""
    ped_period: float
    """Mean seconds between two pedestrian departures (0: no pedestrians)."""
    fringe_factor: float
    """Weight of network-border edges as trip start/end (through traffic)."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_demand_spec(rng: np.random.Generator, seed: int, end: float, sidewalks: bool) -> DemandSpec:
    """Draw a demand level from light to dense traffic, with or without cyclists and pedestrians."""
    return DemandSpec(
        seed=seed, end=end, vehicle_density=float(rng.uniform(60.0, 180.0)),
        bike_period=float(rng.choice((0.0, 2.0, 5.0))),
        ped_period=float(rng.uniform(0.8, 3.0)) if sidewalks else 0.0,
        fringe_factor=float(rng.choice((2.0, 5.0, 10.0))))


def vehicle_types_xml() -> str:
    """The ``additional`` file with the motorised distribution ``veh``, ``bike`` and ``ped`` types."""
    rows = []
    for vid, vclass, prob, length, width, height, accel, decel, vmax in VEHICLE_TYPES:
        rows.append(
            f'    <vType id="{vid}" vClass="{vclass}" probability="{prob}" length="{length}" width="{width}" '
            f'height="{height}" accel="{accel}" decel="{decel}" emergencyDecel="8" maxSpeed="{vmax}" '
            f'minGap="2.5" carFollowModel="IDM" tau="1.2" speedFactor="normc(1.0,0.1,0.7,1.3)" '
            f'lcCooperative="0.9" lcSpeedGain="0.8"/>')
    bl, bw, bh = BIKE_SIZE
    pl, pw, ph = PERSON_SIZE
    return "\n".join([
        "<additional>",
        '  <vTypeDistribution id="veh">', *rows, "  </vTypeDistribution>",
        f'  <vType id="bike" vClass="bicycle" length="{bl}" width="{bw}" height="{bh}" minGap="1.0" accel="1.2" '
        f'decel="3.0" emergencyDecel="6" maxSpeed="7" carFollowModel="IDM" tau="1.0" '
        f'speedFactor="normc(1.0,0.15,0.6,1.3)"/>',
        f'  <vType id="ped" vClass="pedestrian" length="{pl}" width="{pw}" height="{ph}" '
        f'speedFactor="normc(1.0,0.15,0.5,1.5)"/>',
        "</additional>", ""])


def build_routes(net: Path, spec: DemandSpec, workdir: Path) -> list[Path]:
    """Write trips and routes for ``spec`` next to ``net``; return the route files for ``sumo``."""
    types = workdir / "vtypes.add.xml"
    types.write_text(vehicle_types_xml())
    common = ["-n", str(net), "-a", str(types), "--begin", "0", "--end", f"{spec.end:.0f}", "--validate",
              "--fringe-factor", f"{spec.fringe_factor:g}", "--remove-loops"]
    routes = [workdir / "veh.rou.xml"]
    run(["randomTrips.py", *common, "--seed", str(spec.seed), "--prefix", "veh", "-o", "veh.trips.xml",
         "-r", routes[0].name, "--edge-permission", "passenger", "--min-distance", "150", "--lanes",
         "--insertion-density", f"{spec.vehicle_density:.2f}", "--trip-attributes",
         'type="veh" departLane="best" departSpeed="max"'], workdir)
    if spec.bike_period > 0:
        routes.append(workdir / "bike.rou.xml")
        run(["randomTrips.py", *common, "--seed", str(spec.seed + 1), "--prefix", "bike", "-o", "bike.trips.xml",
             "-r", routes[-1].name, "--edge-permission", "bicycle", "--min-distance", "100",
             "--period", f"{spec.bike_period:g}", "--trip-attributes", 'type="bike" departSpeed="max"'], workdir)
    if spec.ped_period > 0:
        routes.append(workdir / "ped.rou.xml")
        run(["randomTrips.py", *common, "--seed", str(spec.seed + 2), "--prefix", "ped", "-o", "ped.trips.xml",
             "-r", routes[-1].name, "--pedestrians", "--min-distance", "50", "--max-distance", "600",
             "--period", f"{spec.ped_period:g}", "--trip-attributes", 'type="ped"'], workdir)
    return routes
