"""``trafficbots-stats``: distributions and log-level rule-violation rates of H5 scene datasets.

    trafficbots-stats FILE_OR_DIR... [--png OUT.png] [--json OUT.json] [--max-scenes N]

Each argument is one dataset (an H5 file or a folder of shards); several are reported side by side
(one table column per dataset) and the PNG overlays their histograms. Statistics of the richest
agent view of each scene (91 steps, or the 11-step history of testing files):

* distributions (streaming histograms, percentiles interpolated within 0.1 %-of-range bins) of
  speed |v|, acceleration and yaw rate per agent type over valid agent-steps (acceleration and yaw
  rate only where the previous step is valid too), agents per scene (valid at any step), map
  polylines per scene (per MapType) and the share of each traffic-light state over valid stop points;
* log-level rates, with the simulator's own metric definitions (:mod:`trafficbots_gym.simulation.metrics`),
  so logs and rollouts are judged alike:

  - ``overlap``: the agent's oriented box overlaps another valid agent's box (separating-axis
    test; pedestrian pairs excluded), per valid agent-step;
  - ``offroad``: vehicle box touches a road edge, or its centre is more than 3.5 m from every
    vehicle-lane (classes 0-2) centreline segment, per valid vehicle-step;
  - ``off_lane``: only the second half: centre more than 3.5 m from every vehicle-lane segment;
  - ``red_light``: a vehicle's centre passes a STOP stop point (lateral offset < 2 m, heading within
    60 deg of the lane) between two consecutive valid steps, per vehicle transition.

  Each rate also gives ``agent_share``: the share of eligible agents flagged at least once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import AgentType, MapType, TLState
from trafficbots_gym.data.h5io import SceneFormatError, SceneReader, atomic_path
from trafficbots_gym.data.scene import Scene, SceneValidationError
from trafficbots_gym.simulation.metrics import (MAX_LANE_DISTANCE, MapGeometry, collisions, lane_distance, offroad,
                                                red_light_violation)
from trafficbots_gym.simulation.state import AgentState

PERCENTILES: tuple[int, ...] = (1, 5, 25, 50, 75, 95, 99)
FINE_BINS: int = 1000
"""Bins of the streaming histograms (percentile resolution = range / FINE_BINS)."""
PLOT_BINS: int = 50
"""About this many bins in the histograms written to JSON and drawn in the PNG."""

_TYPE_NAMES = {t: t.name.lower() for t in AgentType}
# Quantity -> (unit, low, high) of its histogram; kinematics per agent type. Counts use unit bins.
_RANGES: dict[str, tuple[str, float, float]] = {
    "speed_vehicle": ("m/s", 0.0, 40.0), "speed_pedestrian": ("m/s", 0.0, 5.0), "speed_cyclist": ("m/s", 0.0, 15.0),
    "acc_vehicle": ("m/s^2", -10.0, 10.0), "acc_pedestrian": ("m/s^2", -10.0, 10.0),
    "acc_cyclist": ("m/s^2", -10.0, 10.0),
    "yaw_rate_vehicle": ("rad/s", -1.5, 1.5), "yaw_rate_pedestrian": ("rad/s", -5.0, 5.0),
    "yaw_rate_cyclist": ("rad/s", -3.0, 3.0),
    "agents_per_scene": ("agents", 0.0, 65.0),
    "polylines_per_scene": ("polylines", 0.0, 1025.0),
}
_COUNTS: frozenset[str] = frozenset({"agents_per_scene", "polylines_per_scene"})
RATE_DEFINITIONS: dict[str, str] = {
    "overlap": "oriented box overlaps another valid agent's box (separating-axis test, pedestrian pairs "
               "excluded); per valid agent-step",
    "offroad": f"vehicle box touches a road-edge segment, or its centre is more than {MAX_LANE_DISTANCE} m from "
               "every vehicle-lane (classes 0-2) centreline segment; per valid vehicle-step",
    "off_lane": f"vehicle centre more than {MAX_LANE_DISTANCE} m from every vehicle-lane (classes 0-2) centreline "
                "segment; per valid vehicle-step",
    "red_light": "vehicle centre passes a STOP stop point (lateral offset < 2 m, heading within 60 deg of the "
                 "lane) between two consecutive valid steps; per vehicle transition",
}
"""How each log-level rate is counted (also written to the JSON report)."""
RATES: tuple[str, ...] = tuple(RATE_DEFINITIONS)


# ----------------------------------------------------------------------------------------------------
# Streaming accumulators
# ----------------------------------------------------------------------------------------------------

@dataclass
class Histogram:
    """Fixed-range streaming histogram with exact count / mean / min / max and percentiles.

    Values outside [low, high] are counted in the first / last bin (min and max stay exact).
    Percentiles interpolate linearly within a bin, or, for ``discrete`` (integer counts in unit
    bins), are the exact integer.
    """

    low: float
    high: float
    bins: int = FINE_BINS
    discrete: bool = False
    counts: np.ndarray = field(init=False)
    n: int = 0
    total: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.bins, np.int64)

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        if values.size == 0:
            return
        idx = np.floor((values - self.low) / (self.high - self.low) * self.bins).astype(np.int64)
        self.counts += np.bincount(np.clip(idx, 0, self.bins - 1), minlength=self.bins)
        self.n += values.size
        self.total += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def percentile(self, q: float) -> float:
        """Value below which ``q`` % of the samples lie (linear within a bin, clamped to [min, max])."""
        if self.n == 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        target = q / 100.0 * self.n
        i = int(np.searchsorted(cum, target, side="left"))
        below = cum[i - 1] if i > 0 else 0
        frac = 0.0 if self.discrete else (target - below) / max(self.counts[i], 1)
        width = (self.high - self.low) / self.bins
        return float(np.clip(self.low + (i + frac) * width, self.min, self.max))

    def coarse(self, bins: int = PLOT_BINS) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) merging groups of fine bins into about ``bins`` bins (the last may be narrower)."""
        starts = np.arange(0, self.bins, max(1, self.bins // bins))
        width = (self.high - self.low) / self.bins
        return np.append(self.low + starts * width, self.high), np.add.reduceat(self.counts, starts)

    def summary(self, unit: str) -> dict[str, Any]:
        edges, counts = self.coarse()
        return {"unit": unit, "count": self.n, "mean": self.total / self.n if self.n else float("nan"),
                "min": self.min if self.n else float("nan"), "max": self.max if self.n else float("nan"),
                "percentiles": {f"p{q}": self.percentile(q) for q in PERCENTILES},
                "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


@dataclass
class Rate:
    """Events over opportunities (agent-steps), and flagged over eligible agents."""

    events: int = 0
    opportunities: int = 0
    agents_flagged: int = 0
    agents_eligible: int = 0

    def update(self, flags: torch.Tensor, eligible: torch.Tensor) -> None:
        """``flags`` / ``eligible`` [T, A] bool (flags only count where eligible)."""
        flags = flags & eligible
        self.events += int(flags.sum())
        self.opportunities += int(eligible.sum())
        self.agents_flagged += int(flags.any(0).sum())
        self.agents_eligible += int(eligible.any(0).sum())

    def summary(self) -> dict[str, Any]:
        return {"events": self.events, "opportunities": self.opportunities,
                "rate": self.events / self.opportunities if self.opportunities else float("nan"),
                "agents_flagged": self.agents_flagged, "agents_eligible": self.agents_eligible,
                "agent_share": self.agents_flagged / self.agents_eligible if self.agents_eligible else float("nan")}


@dataclass
class DatasetStats:
    """Everything ``trafficbots-stats`` accumulates for one dataset."""

    name: str
    sources: list[str]
    num_scenes: int = 0
    hists: dict[str, Histogram] = field(
        default_factory=lambda: {k: Histogram(lo, hi, int(hi - lo), True) if k in _COUNTS else Histogram(lo, hi)
                                 for k, (_, lo, hi) in _RANGES.items()})
    map_types: dict[str, Histogram] = field(
        default_factory=lambda: {t.name: Histogram(0.0, 1025.0, 1025, True) for t in MapType})
    tl_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(TLState), np.int64))
    rates: dict[str, Rate] = field(default_factory=lambda: {k: Rate() for k in RATES})

    def add_scene(self, scene: Scene) -> None:
        """Accumulate one scene's distributions and violation flags."""
        batch = SceneBatch.from_scenes([scene])
        self.num_scenes += 1
        self._add_kinematics(batch)
        self._add_map_and_lights(batch)
        for name, (flags, eligible) in scene_violations(batch).items():
            self.rates[name].update(flags, eligible)

    def _add_kinematics(self, batch: SceneBatch) -> None:
        valid = batch.agent_valid[0]                                        # [T, A]
        pair = valid.clone()
        pair[0] = False
        pair[1:] &= valid[:-1]
        agent_type = batch.agent_type[0]
        for t, name in _TYPE_NAMES.items():
            of_type = agent_type[:, t].unsqueeze(0)
            self.hists[f"speed_{name}"].update(batch.agent_spd[0].abs()[valid & of_type].numpy())
            self.hists[f"acc_{name}"].update(batch.agent_acc[0][pair & of_type].numpy())
            self.hists[f"yaw_rate_{name}"].update(batch.agent_yaw_rate[0][pair & of_type].numpy())
        self.hists["agents_per_scene"].update(np.array([int(valid.any(0).sum())]))

    def _add_map_and_lights(self, batch: SceneBatch) -> None:
        pl_type = batch.map_type[0] & batch.map_valid[0].any(-1, keepdim=True)   # [P, 11]
        per_type = pl_type.sum(0).numpy()
        for t in MapType:
            self.map_types[t.name].update(per_type[t:t + 1])
        self.hists["polylines_per_scene"].update(per_type.sum(keepdims=True))
        tl = batch.tl_state[0] & batch.tl_valid[0].unsqueeze(-1)
        self.tl_counts += tl.reshape(-1, len(TLState)).sum(0).numpy().astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """JSON-ready report of this dataset."""
        tl_total = int(self.tl_counts.sum())
        return {
            "name": self.name, "sources": self.sources, "num_scenes": self.num_scenes,
            "distributions": {k: h.summary(_RANGES[k][0]) for k, h in self.hists.items()},
            "map_polylines_per_scene": {k: {"mean": h.total / h.n if h.n else float("nan"),
                                            "percentiles": {f"p{q}": h.percentile(q) for q in PERCENTILES}}
                                        for k, h in self.map_types.items()},
            "tl_state_share": {s.name: (int(self.tl_counts[s]) / tl_total if tl_total else float("nan"))
                               for s in TLState},
            "tl_stop_entries": tl_total,
            "rates": {k: r.summary() for k, r in self.rates.items()},
        }


# ----------------------------------------------------------------------------------------------------
# Log-level violation flags (time folded into the batch / agent axes of the simulator metrics)
# ----------------------------------------------------------------------------------------------------

def _states(valid: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor) -> AgentState:
    zeros = torch.zeros_like(yaw)
    return AgentState(valid=valid, pos=pos, yaw=yaw, spd=zeros, vel=torch.zeros_like(pos), acc=zeros,
                      yaw_rate=zeros)


def overlap_flags(valid: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor, size: torch.Tensor,
                  agent_type: torch.Tensor) -> torch.Tensor:
    """[T, A] bool: the agent's box overlaps another valid agent's box at that step.

    ``valid`` [T, A], ``pos`` [T, A, 2], ``yaw`` [T, A], ``size`` [A, 3], ``agent_type`` [A, 3] one-hot.
    Pedestrian-pedestrian pairs are excluded.
    """
    n_step = valid.shape[0]
    return collisions(_states(valid, pos, yaw), size.expand(n_step, -1, -1), agent_type.expand(n_step, -1, -1))


def offroad_flags(valid: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor, size: torch.Tensor,
                  agent_type: torch.Tensor, geom: MapGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """([T, A] offroad, [T, A] off_lane) for valid vehicles against one scene's ``geom`` (batch of 1).

    ``offroad`` is :func:`~trafficbots_gym.simulation.metrics.offroad` (edge touch or far from lanes);
    ``off_lane`` its lane-distance part alone. Only valid vehicle-steps are evaluated.
    """
    n_step, n_agent = valid.shape
    rows = (valid & agent_type[:, AgentType.VEHICLE]).reshape(-1).nonzero().squeeze(-1)
    agent = rows % n_agent
    state = _states(torch.ones(1, len(rows), dtype=torch.bool), pos.reshape(-1, 2)[rows][None],
                    yaw.reshape(-1)[rows][None])
    # Edge test alone (no lane-distance limit), then the lane distance once for both flags.
    on_edge = offroad(state, size[agent][None], agent_type[agent][None], geom, max_lane_distance=float("inf"))
    far = (lane_distance(state.pos, geom) > MAX_LANE_DISTANCE) & geom.has_lane.unsqueeze(-1)
    off, off_lane = torch.zeros(n_step * n_agent, dtype=torch.bool), torch.zeros(n_step * n_agent, dtype=torch.bool)
    off[rows], off_lane[rows] = (on_edge | far)[0], far[0]
    return off.reshape(n_step, n_agent), off_lane.reshape(n_step, n_agent)


def red_light_flags(valid: torch.Tensor, pos: torch.Tensor, yaw: torch.Tensor, agent_type: torch.Tensor,
                    tl_valid: torch.Tensor, tl_state: torch.Tensor, tl_pos: torch.Tensor,
                    tl_dir: torch.Tensor) -> torch.Tensor:
    """[T-1, A] bool: vehicle centre passes a STOP stop point from step t to t+1 (lights of step t+1).

    ``tl_valid`` [T, S], ``tl_state`` [T, S, 5], ``tl_pos`` / ``tl_dir`` [T, S, 2].
    """
    n_step = valid.shape[0]
    prev = _states(valid[:-1], pos[:-1], yaw[:-1])
    now = _states(valid[1:], pos[1:], yaw[1:])
    return red_light_violation(prev, now, tl_valid[1:], tl_state[1:], tl_pos[1:],
                               agent_type.expand(n_step - 1, -1, -1), tl_dir=tl_dir[1:])


def scene_violations(batch: SceneBatch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per rate name: (flags, eligible) [T or T-1, A] bool for the single scene of ``batch``."""
    valid, pos, yaw = batch.agent_valid[0], batch.agent_pos[0], batch.agent_yaw[0]
    size, agent_type = batch.agent_size[0], batch.agent_type[0]
    vehicle = valid & agent_type[:, AgentType.VEHICLE]
    off, far = offroad_flags(valid, pos, yaw, size, agent_type, MapGeometry.from_batch(batch))
    red = red_light_flags(valid, pos, yaw, agent_type, batch.tl_valid[0], batch.tl_state[0], batch.tl_pos[0],
                          batch.tl_dir[0])
    return {"overlap": (overlap_flags(valid, pos, yaw, size, agent_type), valid),
            "offroad": (off, vehicle), "off_lane": (far, vehicle),
            "red_light": (red, vehicle[:-1] & vehicle[1:])}


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------

def dataset_stats(source: str | os.PathLike | SceneReader, name: str, max_scenes: int | None = None) -> DatasetStats:
    """Accumulate the statistics of the first ``max_scenes`` scenes of one H5 dataset (progress bar)."""
    reader = source if isinstance(source, SceneReader) else SceneReader(source)
    stats = DatasetStats(name=name, sources=[str(p) for p in reader.files])
    n = len(reader) if max_scenes is None else min(max_scenes, len(reader))
    with torch.no_grad():
        for i in tqdm(range(n), desc=f"stats {name}", unit="scene", file=sys.stderr):
            stats.add_scene(reader[i])
    reader.close()
    return stats


def table_rows(reports: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(row label, one cell per dataset) of the printed comparison table."""
    def cell(value: float, fmt: str = ".2f") -> str:
        return "nan" if value != value else format(value, fmt)

    rows = [("scenes", [str(r["num_scenes"]) for r in reports])]
    for key in _RANGES:
        unit = _RANGES[key][0]
        for q in (5, 50, 95):
            rows.append((f"{key} p{q} ({unit})", [cell(r["distributions"][key]["percentiles"][f"p{q}"])
                                                   for r in reports]))
    for t in MapType:
        rows.append((f"polylines {t.name} mean", [cell(r["map_polylines_per_scene"][t.name]["mean"], ".1f")
                                                  for r in reports]))
    for s in TLState:
        rows.append((f"TL share {s.name}", [cell(r["tl_state_share"][s.name], ".3f") for r in reports]))
    for k in RATES:
        rows.append((f"rate {k} (per agent-step)", [cell(r["rates"][k]["rate"], ".4f") for r in reports]))
        rows.append((f"rate {k} (agent share)", [cell(r["rates"][k]["agent_share"], ".4f") for r in reports]))
    return rows


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    """Plain-text table: one row per statistic, one column per dataset."""
    rows = table_rows(reports)
    header = ("statistic", [r["name"] for r in reports])
    label_w = max(len(label) for label, _ in [header, *rows])
    col_w = [max(len(header[1][i]), *(len(cells[i]) for _, cells in rows)) for i in range(len(reports))]
    lines = []
    for label, cells in [header, *rows]:
        lines.append("  ".join([label.ljust(label_w), *(c.rjust(w) for c, w in zip(cells, col_w))]))
    return "\n".join(lines)


def write_json(path: str | os.PathLike, reports: Sequence[dict[str, Any]]) -> None:
    """Write the reports and the rate definitions to ``path`` atomically."""
    final = Path(path)
    tmp = atomic_path(final)
    try:
        tmp.write_text(json.dumps({"datasets": list(reports), "definitions": RATE_DEFINITIONS}, indent=1))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_png(path: str | os.PathLike, reports: Sequence[dict[str, Any]]) -> None:
    """Overlay the datasets' histograms (density) and bar charts of map types, TL states and rates."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(_RANGES)
    n_panels = len(keys) + 3
    cols = 4
    fig, axes = plt.subplots((n_panels + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.0 * ((n_panels + cols - 1) // cols)))
    axes = axes.ravel()
    for ax, key in zip(axes, keys):
        for r in reports:
            hist = r["distributions"][key]["histogram"]
            counts = np.asarray(hist["counts"], np.float64)
            edges = np.asarray(hist["edges"])
            if counts.sum() > 0:
                ax.stairs(counts / (counts.sum() * np.diff(edges)), edges, label=r["name"])
        ax.set_title(f"{key} ({_RANGES[key][0]})", fontsize=9)
        ax.tick_params(labelsize=7)
    bar_panels = [("map polylines per scene (mean)", [t.name for t in MapType],
                   lambda r, k: r["map_polylines_per_scene"][k]["mean"]),
                  ("traffic-light state share", [s.name for s in TLState], lambda r, k: r["tl_state_share"][k]),
                  ("violation rate per agent-step", list(RATES), lambda r, k: r["rates"][k]["rate"])]
    for ax, (title, labels, get) in zip(axes[len(keys):], bar_panels):
        width = 0.8 / max(len(reports), 1)
        x = np.arange(len(labels))
        for i, r in enumerate(reports):
            ax.bar(x + i * width, [np.nan_to_num(get(r, k)) for k in labels], width, label=r["name"])
        ax.set_xticks(x + 0.4 - width / 2, labels, rotation=60, ha="right", fontsize=6)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[n_panels:]:
        ax.axis("off")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    final = Path(path)
    tmp = atomic_path(final)
    try:
        fig.savefig(tmp, format="png", dpi=90)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


def dataset_names(sources: Sequence[str]) -> list[str]:
    """Column names: the file or folder name, made unique with the parent folder when needed."""
    names = [Path(s).name or str(s) for s in sources]
    return [str(Path(s)) if names.count(n) > 1 else n for s, n in zip(sources, names)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trafficbots-stats``."""
    parser = argparse.ArgumentParser(prog="trafficbots-stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", metavar="FILE_OR_DIR", help="H5 scene file or folder of shards")
    parser.add_argument("--png", help="write overlaid histograms to this PNG")
    parser.add_argument("--json", help="write the full report to this JSON")
    parser.add_argument("--max-scenes", type=int, default=None, help="only the first N scenes of each dataset")
    args = parser.parse_args(argv)
    if args.max_scenes is not None and args.max_scenes < 1:
        parser.error(f"--max-scenes must be >= 1, got {args.max_scenes}")
    try:
        readers = [SceneReader(src) for src in args.sources]  # fail fast on missing or unreadable inputs
        reports = [dataset_stats(reader, name, args.max_scenes).summary()
                   for reader, name in zip(readers, dataset_names(args.sources))]
    except (SceneFormatError, SceneValidationError) as e:
        parser.exit(2, f"trafficbots-stats: error: {e}\n")
    print(format_table(reports))
    if args.json:
        write_json(args.json, reports)
    if args.png:
        write_png(args.png, reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
