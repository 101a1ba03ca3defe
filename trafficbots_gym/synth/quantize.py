"""Snap the float arrays of a synthetic scene to dyadic grids, so the H5 files compress well.

A packed scene lives in a rotated scene frame, so the low mantissa bits of its float32 values are
rotation noise that the gzip + shuffle filters cannot compress. Rounding each quantity to a power
of two grid (:data:`STEPS`) clears those bits while every value stays a float32 of the reference
layout. The position grid (4 mm) is finer than SUMO's networks, which are written in centimetres. Elementwise rounding keeps every copy relation of the packer exact (``tl_stop/dir``
equals the ``map/dir`` node it was taken from, ``map/boundary`` the extremes of the valid nodes,
``agent/goal`` the last valid state, ``history/*`` the first steps of the full view); ``acc`` and
``yaw_rate`` are re-derived from the rounded speeds and headings (finite differences over
consecutive valid steps, as the packer does) before rounding, so they stay within half a grid step
of the differences of the stored values.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from trafficbots_gym.data.constants import DT
from trafficbots_gym.data.scene import AgentTracks, MapPolylines, NoSimAgents, Scene, TrafficLightStops

STEPS: dict[str, float] = {
    "position": 2.0**-8,
    "speed": 2.0**-8,
    "heading": 2.0**-13,
    "acceleration": 2.0**-6,
    "yaw_rate": 2.0**-9,
}
"""Grid step of each quantity: m, m/s, rad, m/s^2, rad/s (errors are at most half a step)."""

_View = TypeVar("_View")


def snap(x: np.ndarray, step: float) -> np.ndarray:
    """``x`` rounded to the nearest multiple of ``step`` (a power of two), as float32 (no -0.0)."""
    return (np.round(np.asarray(x, np.float64) / step) * step + 0.0).astype(np.float32)


def rate_of(series: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Finite difference / DT of ``series`` [T, A, 1] where steps t-1 and t are both valid, else 0."""
    out = np.zeros_like(series, dtype=np.float64)
    pair = (valid[1:] & valid[:-1])[..., None]
    out[1:] = np.where(pair, np.diff(series.astype(np.float64), axis=0) / DT, 0.0)
    return out


def quantize_agents(agents: AgentTracks) -> AgentTracks:
    """Simulated agents with snapped states and re-derived, snapped acc / yaw rate."""
    s = STEPS
    spd, yaw = snap(agents.spd, s["speed"]), snap(agents.yaw_bbox, s["heading"])
    goal = agents.goal
    if goal is not None:
        goal = np.concatenate([snap(goal[:, :2], s["position"]), snap(goal[:, 2:3], s["heading"]),
                               snap(goal[:, 3:], s["speed"])], axis=-1)
    return dataclasses.replace(
        agents, pos=snap(agents.pos, s["position"]), z=snap(agents.z, s["position"]),
        vel=snap(agents.vel, s["speed"]), spd=spd, yaw_bbox=yaw, goal=goal,
        acc=snap(rate_of(spd, agents.valid), s["acceleration"]),
        yaw_rate=snap(rate_of(yaw, agents.valid), s["yaw_rate"]))


def quantize_no_sim(agents: NoSimAgents) -> NoSimAgents:
    """Non-simulated agents with snapped positions, velocities, speeds and headings."""
    s = STEPS
    return dataclasses.replace(agents, pos=snap(agents.pos, s["position"]), z=snap(agents.z, s["position"]),
                               vel=snap(agents.vel, s["speed"]), spd=snap(agents.spd, s["speed"]),
                               yaw_bbox=snap(agents.yaw_bbox, s["heading"]))


def quantize_map(map_: MapPolylines) -> MapPolylines:
    """Map nodes, direction vectors and boundary snapped to the position grid."""
    step = STEPS["position"]
    return dataclasses.replace(map_, pos=snap(map_.pos, step), dir=snap(map_.dir, step),
                               boundary=snap(map_.boundary, step))


def quantize_stops(stops: TrafficLightStops) -> TrafficLightStops:
    """Stop points and lane directions snapped to the position grid."""
    step = STEPS["position"]
    return dataclasses.replace(stops, pos=snap(stops.pos, step), dir=snap(stops.dir, step))


def quantize_scene(scene: Scene) -> Scene:
    """A copy of ``scene`` with every float array snapped to its grid (same keys, shapes, dtypes)."""
    return dataclasses.replace(
        scene, map=quantize_map(scene.map),
        agent=_maybe(scene.agent, quantize_agents), history_agent=_maybe(scene.history_agent, quantize_agents),
        agent_no_sim=_maybe(scene.agent_no_sim, quantize_no_sim),
        history_agent_no_sim=_maybe(scene.history_agent_no_sim, quantize_no_sim),
        tl_stop=_maybe(scene.tl_stop, quantize_stops), history_tl_stop=_maybe(scene.history_tl_stop, quantize_stops))


def _maybe(view: _View | None, fn: Callable[[_View], _View]) -> _View | None:
    return None if view is None else fn(view)
