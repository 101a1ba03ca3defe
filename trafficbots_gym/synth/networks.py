"""Random road networks: ``netgenerate`` topology, then curved streets and mixed junction control.

``sample_network_spec`` draws a :class:`NetworkSpec` (kind grid / spider / rand, lanes, speed,
turn lanes, junction-control mix, sidewalks, bike lanes, curvature) from a numpy Generator;
``build_network`` turns it into a SUMO ``.net.xml``: netgenerate writes plain XML, we bend some
streets and assign a control type to every junction, netconvert builds the final network with
sidewalks, crossings, bike lanes and traffic-light programs. Everything is seeded.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trafficbots_gym.synth.sumo_tools import run

KINDS: tuple[str, ...] = ("grid", "spider", "rand")
JUNCTION_TYPES: tuple[str, ...] = ("traffic_light", "priority", "priority_stop", "allway_stop",
                                   "right_before_left")

# Junction-control styles: probabilities over JUNCTION_TYPES for junctions with >= 3 roads.
JUNCTION_STYLES: dict[str, tuple[float, ...]] = {
    "signalised": (0.85, 0.10, 0.05, 0.0, 0.0),
    "mixed": (0.45, 0.20, 0.15, 0.10, 0.10),
    "stop_controlled": (0.10, 0.10, 0.40, 0.40, 0.0),
    "residential": (0.0, 0.20, 0.20, 0.20, 0.40),
    "highway": (0.0, 1.0, 0.0, 0.0, 0.0),
}
FREEWAY_SPEED: float = 27.78
"""Speed (m/s, 100 km/h) of the freeway-like networks."""


@dataclass(frozen=True)
class NetworkSpec:
    """Everything that determines one generated network."""

    kind: str
    seed: int
    lanes: int
    """Lanes per direction (upper bound when ``random_lanes``)."""
    random_lanes: bool
    speed: float
    """Speed limit (m/s)."""
    lane_width: float
    turn_lanes: int
    """Extra left-turn lanes before junctions (0 or 1)."""
    junction_style: str
    sidewalks: bool
    bike_lanes: bool
    curvature: float
    """Probability that a street is bent (spider rings are always bent into arcs when > 0)."""
    perturb: float
    """Standard deviation (m) of the junction position jitter."""
    junction_radius: float
    size: int
    """Grid junctions per side, spider circles, or rand iterations."""
    spacing: float
    """Grid street length, spider ring spacing, or rand mean edge length (m)."""
    arms: int = 0
    """Spider arms."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sample_network_spec(rng: np.random.Generator, seed: int) -> NetworkSpec:
    """Draw a varied network: urban grids / spiders / random towns, sometimes freeway-like."""
    kind = str(rng.choice(KINDS, p=(0.45, 0.2, 0.35)))
    freeway = bool(rng.random() < 0.12)
    if freeway:
        speed, style, lanes = FREEWAY_SPEED, "highway", int(rng.integers(2, 4))
    else:
        speed = float(rng.choice((11.11, 13.89, 13.89, 16.67)))
        style = str(rng.choice(list(JUNCTION_STYLES)[:4], p=(0.35, 0.35, 0.15, 0.15)))
        lanes = int(rng.choice((1, 2, 3), p=(0.35, 0.45, 0.2)))
    size = {"grid": int(rng.integers(3, 5)), "spider": int(rng.integers(2, 4)),
            "rand": int(rng.integers(25, 60))}[kind]
    spacing = {"grid": float(rng.uniform(90, 180)), "spider": float(rng.uniform(70, 120)),
               "rand": float(rng.uniform(80, 160))}[kind]
    if freeway:
        spacing *= 2.0
    return NetworkSpec(
        kind=kind, seed=seed, lanes=lanes, random_lanes=bool(not freeway and rng.random() < 0.4),
        speed=speed, lane_width=float(rng.choice((3.0, 3.2, 3.5))),
        turn_lanes=int(not freeway and lanes >= 2 and rng.random() < 0.4), junction_style=style,
        sidewalks=not freeway and bool(rng.random() < 0.85), bike_lanes=not freeway and bool(rng.random() < 0.4),
        curvature=0.0 if freeway and kind != "spider" else float(rng.choice((0.0, 0.3, 0.6))),
        perturb=float(rng.choice((0.0, 4.0, 8.0))) if kind == "grid" else 0.0,
        junction_radius=float(rng.uniform(6.0, 12.0)), size=size, spacing=spacing,
        arms=int(rng.integers(4, 6)) if kind == "spider" else 0)


def build_network(spec: NetworkSpec, workdir: Path) -> Path:
    """Build ``workdir/net.net.xml`` for ``spec`` (netgenerate -> edited plain XML -> netconvert)."""
    workdir.mkdir(parents=True, exist_ok=True)
    run(_netgenerate_args(spec) + ["--plain-output-prefix", "plain", "-o", "netgen.net.xml"], workdir)
    rng = np.random.default_rng([spec.seed, 0x6E6574])
    nodes_tree = ET.parse(workdir / "plain.nod.xml")
    edges_tree = ET.parse(workdir / "plain.edg.xml")
    _assign_junction_types(nodes_tree.getroot(), edges_tree.getroot(), JUNCTION_STYLES[spec.junction_style], rng)
    if spec.curvature > 0:
        _bend_streets(nodes_tree.getroot(), edges_tree.getroot(), spec, rng)
    nodes_tree.write(workdir / "edited.nod.xml")
    edges_tree.write(workdir / "edited.edg.xml")
    net = workdir / "net.net.xml"
    run(_netconvert_args(spec) + ["--node-files", "edited.nod.xml", "--edge-files", "edited.edg.xml",
                                  "-o", net.name], workdir)
    return net


def _netgenerate_args(spec: NetworkSpec) -> list[str]:
    args = ["netgenerate", f"--{spec.kind}", "--seed", str(spec.seed), "-L", str(spec.lanes),
            "--default.speed", f"{spec.speed:.2f}", "--default.junctions.type", "priority", "--no-warnings"]
    if spec.random_lanes:
        args.append("--random-lanenumber")
    if spec.turn_lanes:
        args += ["--turn-lanes", str(spec.turn_lanes), "--turn-lanes.length", "30"]
    if spec.perturb > 0:
        dist = f"normc(0,{spec.perturb:.1f},{-2 * spec.perturb:.1f},{2 * spec.perturb:.1f})"
        args += ["--perturb-x", dist, "--perturb-y", dist]
    if spec.kind == "grid":
        args += ["--grid.number", str(spec.size), "--grid.length", f"{spec.spacing:.1f}",
                 "--grid.attach-length", f"{0.8 * spec.spacing:.1f}"]
    elif spec.kind == "spider":
        args += ["--spider.arm-number", str(spec.arms), "--spider.circle-number", str(spec.size),
                 "--spider.space-radius", f"{spec.spacing:.1f}", "--spider.attach-length", f"{spec.spacing:.1f}"]
    else:
        args += ["--rand.iterations", str(spec.size), "--rand.min-distance", f"{0.6 * spec.spacing:.1f}",
                 "--rand.max-distance", f"{1.4 * spec.spacing:.1f}", "--rand.min-angle", "70",
                 "--rand.connectivity", "0.9", "--rand.neighbor-dist1", "0", "--rand.neighbor-dist2", "0.5",
                 "--rand.neighbor-dist3", "10", "--rand.neighbor-dist4", "10", "--rand.neighbor-dist5", "0",
                 "--rand.neighbor-dist6", "0"]
    return args


def _netconvert_args(spec: NetworkSpec) -> list[str]:
    speed_cap = f"{spec.speed + 0.1:.2f}"
    args = ["netconvert", "--seed", str(spec.seed), "--default.lanewidth", f"{spec.lane_width:.2f}",
            "--default.junctions.radius", f"{spec.junction_radius:.1f}", "--junctions.corner-detail", "6",
            "--junctions.internal-link-detail", "8", "--no-turnarounds.except-deadend",
            "--tls.default-type", "static", "--tls.left-green.time", "6", "--no-warnings"]
    if spec.sidewalks:
        args += ["--sidewalks.guess", "--sidewalks.guess.max-speed", speed_cap, "--crossings.guess",
                 "--crossings.guess.speed-threshold", speed_cap]
    if spec.bike_lanes:
        args += ["--bikelanes.guess", "--bikelanes.guess.max-speed", speed_cap]
    return args


def _neighbours(edges: ET.Element) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in edges.iter("edge"):
        a, b = e.get("from"), e.get("to")
        if a is None or b is None:
            continue
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return out


def _assign_junction_types(nodes: ET.Element, edges: ET.Element, weights: tuple[float, ...],
                           rng: np.random.Generator) -> None:
    """Give every junction of >= 3 roads a control type drawn from ``weights``; others priority."""
    neighbours = _neighbours(edges)
    p = np.asarray(weights) / np.sum(weights)
    for node in sorted(nodes.iter("node"), key=lambda n: n.get("id", "")):
        node.attrib.pop("tl", None)
        degree = len(neighbours.get(node.get("id", ""), ()))
        node.set("type", str(rng.choice(JUNCTION_TYPES, p=p)) if degree >= 3 else "priority")


def _node_xy(nodes: ET.Element) -> dict[str, np.ndarray]:
    return {n.get("id", ""): np.array([float(n.get("x", 0)), float(n.get("y", 0))]) for n in nodes.iter("node")}


def _bend_streets(nodes: ET.Element, edges: ET.Element, spec: NetworkSpec, rng: np.random.Generator) -> None:
    """Bend streets into smooth arcs; both directions of a street get the same (reversed) shape.

    Spider rings become circular arcs around the network centre; other streets longer than 60 m
    are bent with probability ``spec.curvature`` by a half-sine of random side and height.
    Edges that already carry an explicit shape (turn-lane splits) stay straight.
    """
    xy = _node_xy(nodes)
    centre = np.mean(np.stack(list(xy.values())), axis=0)
    by_pair = {(e.get("from"), e.get("to")): e for e in edges.iter("edge")}
    for (a, b), edge in sorted(by_pair.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
        if a is None or b is None or str(a) > str(b) and (b, a) in by_pair:
            continue  # the reverse edge of a street is shaped together with its partner
        reverse = by_pair.get((b, a))
        if edge.get("shape") or (reverse is not None and reverse.get("shape")):
            continue
        p0, p1 = xy[a], xy[b]
        length = float(np.linalg.norm(p1 - p0))
        if length < 60.0:
            continue
        r0, r1 = np.linalg.norm(p0 - centre), np.linalg.norm(p1 - centre)
        n_pts = max(3, int(length / 5.0))
        s = np.linspace(0.0, 1.0, n_pts)
        if spec.kind == "spider" and abs(r0 - r1) < 1.0 and r0 > 1.0:  # ring: circular arc
            a0, a1 = (math.atan2(*(p - centre)[::-1]) for p in (p0, p1))
            a1 = a0 + (a1 - a0 + math.pi) % (2 * math.pi) - math.pi
            angle, radius = a0 + s * (a1 - a0), r0 + s * (r1 - r0)
            pts = centre + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        elif spec.kind != "spider" and rng.random() < spec.curvature:
            height = float(rng.uniform(0.05, 0.14) * length * rng.choice((-1.0, 1.0)))
            normal = np.array([-(p1 - p0)[1], (p1 - p0)[0]]) / length
            pts = p0 + s[:, None] * (p1 - p0) + normal * (height * np.sin(np.pi * s))[:, None]
        else:
            continue
        edge.set("shape", _shape_str(pts))
        if reverse is not None:
            reverse.set("shape", _shape_str(pts[::-1]))


def _shape_str(points: np.ndarray) -> str:
    return " ".join(f"{x:.2f},{y:.2f}" for x, y in points)
