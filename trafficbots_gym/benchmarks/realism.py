"""WOSAC-style realism of simulated agents against the log (2025 sim-agents configuration).

Given K closed-loop rollouts of every scene and the logged future, per-object features are pooled
over rollouts and steps into a histogram (or a Bernoulli for the event features), each logged value
is scored by its log-likelihood under that histogram, averaged over valid (object, step) pairs,
exponentiated, and combined with the 2025 weights into a meta-metric. See
``docs/benchmarks.md`` for where this follows WOSAC exactly and where it approximates it
(2-D boxes, SAT separation distance instead of rounded-corner distance, unsigned road-edge
distance signed by the off-road test).

Two layers:

* scoring (``histogram_log_likelihood``, ``bernoulli_log_likelihood``, ``realism_scores``) on tensors
  ``[S, K, T, A]`` (scenes, rollouts, steps, objects) for the simulation and ``[S, T, A]`` for the log;
* features (``scene_features``): the ten per-step WOSAC features of the evaluated objects of B
  trajectories ``[B, T, A]`` (log or rollouts; steps 0..90 with the history, so central differences are
  defined from the first future step on), computed in chunks of steps to bound memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.constants import DT, STEP_CURRENT, AgentRole, AgentType
from trafficbots_gym.simulation import metrics
from trafficbots_gym.simulation.dynamics import wrap_angle
from trafficbots_gym.simulation.metrics import EDGE_CANDIDATES, MapGeometry, time_to_collision
from trafficbots_gym.simulation.state import AgentState


@dataclass(frozen=True)
class HistogramSpec:
    """Fixed-range histogram used to estimate a feature's distribution."""

    low: float
    high: float
    bins: int
    pseudocount: float = 0.1


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    weight: float
    histogram: HistogramSpec | None  # None -> Bernoulli event feature
    vehicles_only: bool = False


WOSAC_2025: tuple[FeatureSpec, ...] = (
    FeatureSpec("linear_speed", 0.05, HistogramSpec(0.0, 25.0, 10)),
    FeatureSpec("linear_acceleration", 0.05, HistogramSpec(-12.0, 12.0, 11)),
    FeatureSpec("angular_speed", 0.05, HistogramSpec(-0.628, 0.628, 11)),
    FeatureSpec("angular_acceleration", 0.05, HistogramSpec(-3.14, 3.14, 11)),
    FeatureSpec("distance_to_nearest_object", 0.10, HistogramSpec(-5.0, 40.0, 10)),
    FeatureSpec("collision", 0.25, None),
    FeatureSpec("time_to_collision", 0.10, HistogramSpec(0.0, 5.0, 10), vehicles_only=True),
    FeatureSpec("distance_to_road_edge", 0.05, HistogramSpec(-20.0, 40.0, 10)),
    FeatureSpec("offroad", 0.25, None),
    FeatureSpec("traffic_light_violation", 0.05, None, vehicles_only=True),
)
"""Features, weights and histogram configs of the 2025 sim-agents challenge (weights sum to 1)."""

BERNOULLI_PSEUDOCOUNT = 0.001


def central_diff(x: torch.Tensor, dt: float, dim: int = -2, wrap: bool = False) -> torch.Tensor:
    """Central difference along ``dim`` ((x[t+1] - x[t-1]) / 2dt); the two ends are NaN (undefined)."""
    x = x.movedim(dim, 0)
    d = x[2:] - x[:-2]
    if wrap:
        d = wrap_angle(d)
    out = torch.full_like(x, float("nan"))
    out[1:-1] = d / (2 * dt)
    return out.movedim(0, dim)


def kinematic_features(pos: torch.Tensor, yaw: torch.Tensor, dt: float = 0.1) -> dict[str, torch.Tensor]:
    """Linear/angular speed and acceleration from ``pos`` [..., T, A, 2] and ``yaw`` [..., T, A].

    Undefined entries (ends of the sequence) are NaN; callers mask them with validity.
    """
    vel = central_diff(pos, dt, dim=-3)
    speed = vel.norm(dim=-1)
    ang_speed = central_diff(yaw, dt, dim=-2, wrap=True)
    return {
        "linear_speed": speed,
        "linear_acceleration": central_diff(speed, dt, dim=-2),
        "angular_speed": ang_speed,
        "angular_acceleration": central_diff(ang_speed, dt, dim=-2),
    }


def histogram_log_likelihood(sim: torch.Tensor, sim_valid: torch.Tensor, log: torch.Tensor,
                             spec: HistogramSpec) -> torch.Tensor:
    """Per-object log-likelihood of each logged value under the histogram of pooled simulated values.

    ``sim`` [S, K, T, A] is pooled over K and T per (scene, object) (``independent_timesteps``);
    ``log`` [S, T, A] is scored bin by bin. Returns [S, T, A] log-probabilities.
    """
    edges = torch.linspace(spec.low, spec.high, spec.bins + 1, device=sim.device, dtype=sim.dtype)

    def bin_of(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(spec.low, spec.high)
        return torch.bucketize(x, edges[1:-1], right=True)

    s, k, t, a = sim.shape
    sim_bins = bin_of(torch.nan_to_num(sim)).permute(0, 3, 1, 2).reshape(s, a, k * t)       # [S, A, K*T]
    weight = sim_valid.permute(0, 3, 1, 2).reshape(s, a, k * t).to(sim.dtype)
    counts = torch.zeros(s, a, spec.bins, dtype=sim.dtype, device=sim.device).scatter_add_(-1, sim_bins, weight)
    probs = (counts + spec.pseudocount) / (counts.sum(-1, keepdim=True) + spec.pseudocount * spec.bins)
    log_bins = bin_of(torch.nan_to_num(log))                                  # [S, T, A]
    logp = probs.log().unsqueeze(1).expand(s, t, a, spec.bins)
    return logp.gather(-1, log_bins.unsqueeze(-1)).squeeze(-1)


def bernoulli_log_likelihood(sim_event: torch.Tensor, log_event: torch.Tensor,
                             pseudocount: float = BERNOULLI_PSEUDOCOUNT) -> torch.Tensor:
    """Log-likelihood of each object's logged event [S, A] under the rate of its K simulated events [S, K, A]."""
    k = sim_event.shape[1]
    n_true = sim_event.to(torch.float64).sum(1)
    p_true = (n_true + pseudocount) / (k + 2 * pseudocount)
    p = torch.where(log_event, p_true, 1 - p_true)
    return p.log().to(torch.float32)


def masked_mean_exp(logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """exp(mean of ``logp`` over the valid entries) per scene (first dim); NaN where nothing is valid."""
    dims = tuple(range(1, logp.ndim))
    total = torch.where(valid, logp, torch.zeros_like(logp)).sum(dims)
    count = valid.sum(dims)
    return torch.where(count > 0, torch.exp(total / count.clamp(min=1)), torch.full_like(total, float("nan")))


@dataclass
class RealismInputs:
    """Per-step features of K rollouts and of the log for the evaluated objects.

    Time-series features are ``[S, K, T, A]`` (sim) and ``[S, T, A]`` (log) with validity masks;
    event features are per step too and are reduced with "any over time" on log-valid steps.
    """

    sim: dict[str, torch.Tensor]
    sim_valid: dict[str, torch.Tensor]
    log: dict[str, torch.Tensor]
    log_valid: dict[str, torch.Tensor]
    eval_mask: torch.Tensor      # [S, A] objects that are scored (SDC + tracks to predict, or all)
    is_vehicle: torch.Tensor     # [S, A]

    def repeat_rollouts(self, rollouts: int) -> "RealismInputs":
        """The same inputs with the simulated rollout axis (of size 1 or ``rollouts``) broadcast to
        ``rollouts`` (a deterministic model's single rollout counts as K identical ones)."""
        def expand(x: torch.Tensor) -> torch.Tensor:
            return x.expand(x.shape[0], rollouts, *x.shape[2:])
        return RealismInputs({n: expand(v) for n, v in self.sim.items()},
                             {n: expand(v) for n, v in self.sim_valid.items()},
                             self.log, self.log_valid, self.eval_mask, self.is_vehicle)


def realism_scores(inputs: RealismInputs, features: tuple[FeatureSpec, ...] = WOSAC_2025) -> dict[str, torch.Tensor]:
    """Per-scene likelihood of every feature and the weighted meta-metric, each a tensor [S]."""
    out: dict[str, torch.Tensor] = {}
    meta = None
    for spec in features:
        objects = inputs.eval_mask & (inputs.is_vehicle if spec.vehicles_only else torch.ones_like(inputs.eval_mask))
        log_valid = inputs.log_valid[spec.name] & objects.unsqueeze(1)
        if spec.histogram is not None:
            logp = histogram_log_likelihood(inputs.sim[spec.name], inputs.sim_valid[spec.name],
                                            inputs.log[spec.name], spec.histogram)
            score = masked_mean_exp(logp, log_valid)
        else:
            sim_event = (inputs.sim[spec.name].bool() & inputs.log_valid[spec.name].unsqueeze(1)).any(2)  # [S,K,A]
            log_event = (inputs.log[spec.name].bool() & inputs.log_valid[spec.name]).any(1)               # [S,A]
            score = masked_mean_exp(bernoulli_log_likelihood(sim_event, log_event), objects)
        out[spec.name] = score
        term = spec.weight * torch.nan_to_num(score, nan=1.0)  # a feature with no valid object is not penalised
        meta = term if meta is None else meta + term
    assert meta is not None
    out["realism_meta_metric"] = meta
    return out


BUCKETS: dict[str, tuple[str, ...]] = {
    "kinematic_metrics": ("linear_speed", "linear_acceleration", "angular_speed", "angular_acceleration"),
    "interactive_metrics": ("distance_to_nearest_object", "collision", "time_to_collision"),
    "map_based_metrics": ("distance_to_road_edge", "offroad", "traffic_light_violation"),
}
"""The leaderboard's likelihood buckets."""


def bucket_scores(scores: dict[str, torch.Tensor],
                  features: tuple[FeatureSpec, ...] = WOSAC_2025) -> dict[str, torch.Tensor]:
    """Per scene, each bucket's weighted mean likelihood, normalised by the bucket's weight sum (a
    likelihood without valid objects counts as 1, as in the meta-metric)."""
    weights = {f.name: f.weight for f in features}
    out = {}
    for bucket, names in BUCKETS.items():
        total = sum(weights[n] for n in names)
        out[bucket] = sum(weights[n] * torch.nan_to_num(scores[n], nan=1.0) for n in names) / total
    return out


def simulated_event_rates(inputs: RealismInputs,
                          features: tuple[FeatureSpec, ...] = WOSAC_2025) -> dict[str, torch.Tensor]:
    """Per scene [S], the share of (evaluated object, rollout) pairs with at least one event of each
    Bernoulli feature (over log-valid steps, as scored); NaN where no object qualifies."""
    out = {}
    for spec in features:
        if spec.histogram is not None:
            continue
        objects = inputs.eval_mask & (inputs.is_vehicle if spec.vehicles_only else torch.ones_like(inputs.eval_mask))
        event = (inputs.sim[spec.name].bool() & inputs.log_valid[spec.name].unsqueeze(1)).any(2)  # [S, K, A]
        pairs = objects.unsqueeze(1).expand_as(event)
        count = pairs.sum((1, 2))
        rate = (event & pairs).sum((1, 2)).to(torch.float32) / count.clamp(min=1)
        out[f"{spec.name}_rate"] = torch.where(count > 0, rate, torch.full_like(rate, float("nan")))
    return out


def min_ade(sim_pos: torch.Tensor, log_pos: torch.Tensor, log_valid: torch.Tensor,
            eval_mask: torch.Tensor) -> torch.Tensor:
    """Per scene [S], min over rollouts of the mean over evaluated objects of each object's ADE.

    ``sim_pos`` [S, K, T, A, 2], ``log_pos`` [S, T, A, 2], ``log_valid`` [S, T, A] (the future steps only;
    WOSAC divides by all 91 steps, which scales a fully valid agent's value by 80/91), ``eval_mask`` [S, A].
    NaN for a scene without any valid evaluated object.
    """
    err = (sim_pos - log_pos.unsqueeze(1)).norm(dim=-1)                        # [S, K, T, A]
    valid = log_valid.unsqueeze(1)
    steps = valid.sum(2)                                                       # [S, 1, A]
    ade = (err * valid).sum(2) / steps.clamp(min=1)                            # [S, K, A]
    objects = eval_mask.unsqueeze(1) & (steps > 0)
    n = objects.sum(-1)                                                        # [S, 1]
    mean = (ade * objects).sum(-1) / n.clamp(min=1)                            # [S, K]
    best = mean.amin(1)
    return torch.where(n.squeeze(1) > 0, best, torch.full_like(best, float("nan")))


# ----------------------------------------------------------------------------------------------------
# Per-step features of trajectories
# ----------------------------------------------------------------------------------------------------

FAR = 1.0e4
"""Distance (m) reported without another object or road edge in reach (the histograms clip it)."""
KINEMATIC_SUPPORT = {"linear_speed": 1, "angular_speed": 1, "linear_acceleration": 2, "angular_acceleration": 2}
"""Steps either side that a kinematic feature's central differences need valid."""


@dataclass
class Trajectories:
    """Box centre, heading and validity of every agent of B rows over steps 0..T-1."""

    pos: torch.Tensor    # [B, T, A, 2]
    yaw: torch.Tensor    # [B, T, A]
    valid: torch.Tensor  # [B, T, A] bool

    @staticmethod
    def from_log(batch: SceneBatch) -> "Trajectories":
        """The logged trajectories of ``batch``."""
        return Trajectories(pos=batch.agent_pos, yaw=batch.agent_yaw, valid=batch.agent_valid)


@dataclass
class SceneFeatures:
    """Per-step WOSAC features of the evaluated objects, ``[B, T_future, E]`` each, with validity."""

    values: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]


def evaluated_objects(batch: SceneBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot index [B, E], mask [B, E]) of each scene's evaluated objects: the SDC and the tracks to
    predict that are valid at step 10, padded to the largest count E (padding repeats slot 0)."""
    roles = batch.agent_role.bool()
    mask = (roles[..., AgentRole.SDC] | roles[..., AgentRole.PREDICT]) & batch.agent_valid[:, STEP_CURRENT]
    e = max(int(mask.sum(-1).max()), 1)
    order = torch.argsort((~mask).to(torch.uint8), dim=-1, stable=True)[:, :e]
    keep = torch.gather(mask, 1, order)
    return torch.where(keep, order, torch.zeros_like(order)), keep


def box_separation(pos_a: torch.Tensor, yaw_a: torch.Tensor, size_a: torch.Tensor,
                   pos_b: torch.Tensor, yaw_b: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
    """Signed separation (m) of oriented boxes a and b (broadcast): the largest gap along the four
    separating axes (both boxes' headings and normals). Positive: apart, a lower bound of the distance
    (exact when the nearest features are a side and a corner); <= 0: overlapping, minus the smallest
    penetration depth. ``size_*`` [..., >=2] = (length, width)."""
    d = pos_b - pos_a
    la, wa = 0.5 * size_a[..., 0], 0.5 * size_a[..., 1]
    lb, wb = 0.5 * size_b[..., 0], 0.5 * size_b[..., 1]
    c = torch.cos(yaw_b - yaw_a).abs()
    s = torch.sin(yaw_b - yaw_a).abs()
    ca, sa, cb, sb = torch.cos(yaw_a), torch.sin(yaw_a), torch.cos(yaw_b), torch.sin(yaw_b)
    dx, dy = d[..., 0], d[..., 1]
    gaps = torch.stack([
        (dx * ca + dy * sa).abs() - (la + lb * c + wb * s),
        (-dx * sa + dy * ca).abs() - (wa + lb * s + wb * c),
        (dx * cb + dy * sb).abs() - (lb + la * c + wa * s),
        (-dx * sb + dy * cb).abs() - (wb + la * s + wa * c),
    ], dim=-1)
    return gaps.amax(-1)


def road_edge_distance(pos: torch.Tensor, yaw: torch.Tensor, size: torch.Tensor, offroad: torch.Tensor,
                       geometry: MapGeometry, k: int = EDGE_CANDIDATES) -> torch.Tensor:
    """[B, Q] signed distance (m) from boxes (``pos`` [B, Q, 2], ``yaw`` [B, Q], ``size`` [B, Q, >=2]) to the
    road edges, positive off-road: the box's most off-road corner, with the sign of ``offroad`` [B, Q]
    (the simulator's test) instead of WOSAC's edge orientation. On-road: minus the distance of the corner
    nearest to an edge; off-road: the distance of the corner farthest from one. ``FAR`` without edges."""
    b, q = pos.shape[:2]
    corners = metrics.box_corners(pos, yaw, size[..., 0], size[..., 1]).reshape(b, q * 4, 2)
    start, vec, valid = geometry.edges.candidates(corners, k)
    dist = metrics.point_segment_distance(corners, start, vec).masked_fill(~valid, float("inf")).amin(-1)
    dist = dist.clamp(max=FAR).reshape(b, q, 4)
    return torch.where(offroad, dist.amax(-1), -dist.amin(-1))


def _central_speed(pos: torch.Tensor, dt: float) -> torch.Tensor:
    """Speed [B, T, A] by central differences of ``pos`` [B, T, A, 2] (0 where undefined)."""
    return torch.nan_to_num(central_diff(pos, dt, dim=-3).norm(dim=-1))


def gather_agents(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` [B, T, A, ...] at agent slots ``index`` [B, E]: [B, T, E, ...]."""
    idx = index.view(index.shape[0], 1, index.shape[1], *([1] * (x.ndim - 3)))
    return torch.gather(x, 2, idx.expand(x.shape[0], x.shape[1], index.shape[1], *x.shape[3:]))


def _support(valid: torch.Tensor, steps: int) -> torch.Tensor:
    """[B, T, A] valid at t and at the ``steps`` steps either side (false near the ends)."""
    out = valid.clone()
    for k in range(1, steps + 1):
        out[:, k:] &= valid[:, :-k]
        out[:, :-k] &= valid[:, k:]
        out[:, :k] = False
        out[:, -k:] = False
    return out


def _boxes(pos: torch.Tensor, yaw: torch.Tensor, valid: torch.Tensor) -> AgentState:
    """An ``AgentState`` holding only boxes (the metrics read valid, pos and yaw)."""
    zeros = torch.zeros_like(yaw)
    return AgentState(valid=valid, pos=pos, yaw=yaw, spd=zeros, vel=torch.zeros_like(pos), acc=zeros, yaw_rate=zeros)


def scene_features(traj: Trajectories, batch: SceneBatch, geometry: MapGeometry, eval_index: torch.Tensor,
                   *, start: int = STEP_CURRENT + 1, dt: float = DT, rows_per_chunk: int = 256,
                   steps_per_chunk: int = 8) -> SceneFeatures:
    """The ten WOSAC features of the evaluated objects ``eval_index`` [B, E] of ``traj`` (rows aligned
    with ``batch`` and ``geometry``), for steps ``start``..T-1: ``[B, T - start, E]`` each.

    Interaction features consider the sim agents (valid at step 10) that are valid at the step; the
    other agents of the scene (spawned later) are ignored, as they do not exist in a WOSAC rollout.
    Interaction and map features run in chunks of rows and steps to bound memory.
    """
    n_step = traj.pos.shape[1]
    if not 2 <= start < n_step:
        raise ValueError(f"start step {start} outside [2, {n_step})")
    objects = traj.valid & batch.agent_valid[:, STEP_CURRENT].unsqueeze(1)            # [B, T, A]
    pos_e, yaw_e = gather_agents(traj.pos, eval_index), gather_agents(traj.yaw, eval_index)
    valid_e = gather_agents(objects, eval_index)                                       # [B, T, E]
    values, valid = {}, {}
    for name, x in kinematic_features(pos_e, yaw_e, dt).items():
        values[name] = torch.nan_to_num(x[:, start:])
        valid[name] = _support(valid_e, KINEMATIC_SUPPORT[name])[:, start:]
    speed = _central_speed(traj.pos, dt)
    chunks: dict[str, list[list[torch.Tensor]]] = {}
    for r0 in range(0, traj.pos.shape[0], rows_per_chunk):
        rows = torch.arange(r0, min(r0 + rows_per_chunk, traj.pos.shape[0]), device=traj.pos.device)
        parts: dict[str, list[torch.Tensor]] = {}
        for t0 in range(start, n_step, steps_per_chunk):
            steps = torch.arange(t0, min(t0 + steps_per_chunk, n_step), device=traj.pos.device)
            for name, x in _step_features(traj, objects, speed, batch, geometry, eval_index, rows, steps).items():
                parts.setdefault(name, []).append(x)
        for name, xs in parts.items():
            chunks.setdefault(name, []).append(xs)
    for name, rows_parts in chunks.items():
        values[name] = torch.cat([torch.cat(xs, dim=1) for xs in rows_parts], dim=0)
    step_valid = valid_e[:, start:]
    has_edge = geometry.edges.valid.flatten(1).any(-1).view(-1, 1, 1)
    for name in ("distance_to_nearest_object", "collision", "time_to_collision", "offroad"):
        valid[name] = step_valid
    valid["distance_to_road_edge"] = step_valid & has_edge
    valid["traffic_light_violation"] = step_valid & valid_e[:, start - 1:-1]
    values["collision"] = values["distance_to_nearest_object"] < 0
    return SceneFeatures(values=values, valid=valid)


def _step_features(traj: Trajectories, objects: torch.Tensor, speed: torch.Tensor, batch: SceneBatch,
                   geometry: MapGeometry, eval_index: torch.Tensor, rows: torch.Tensor,
                   steps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Interaction, map and traffic-light features of rows ``rows`` at ``steps``: [R, len(steps), E] each."""
    idx = eval_index[rows]
    at = (rows.unsqueeze(1), steps.unsqueeze(0))                                        # -> [R, Tc, A, ...]
    pos, yaw, obj, spd = traj.pos[at], traj.yaw[at], objects[at], speed[at]
    size = batch.agent_size[rows].unsqueeze(1).expand(-1, len(steps), -1, -1)         # [R, Tc, A, 3]
    pos_e, yaw_e, obj_e = gather_agents(pos, idx), gather_agents(yaw, idx), gather_agents(obj, idx)
    size_e, spd_e = gather_agents(size, idx), gather_agents(spd, idx)
    # nearest object and time to collision: evaluated objects [R, Tc, E, 1] against all objects [R, Tc, 1, A]
    sep = box_separation(pos_e.unsqueeze(-2), yaw_e.unsqueeze(-1), size_e.unsqueeze(-2),
                         pos.unsqueeze(-3), yaw.unsqueeze(-2), size.unsqueeze(-3))
    n_agent = pos.shape[2]
    is_self = idx.view(idx.shape[0], 1, -1, 1) == torch.arange(n_agent, device=idx.device)
    others = obj.unsqueeze(-2) & ~is_self
    nearest = sep.masked_fill(~others, FAR).amin(-1).clamp(max=FAR)
    ttc = time_to_collision(pos_e, yaw_e, size_e, spd_e, pos, yaw, size, spd, obj)
    # map: the evaluated boxes of all chunk steps as one query set per row
    r, tc, e = pos_e.shape[:3]
    flat_state = _boxes(pos_e.reshape(r, tc * e, 2), yaw_e.reshape(r, tc * e), obj_e.reshape(r, tc * e))
    flat_size = size_e.reshape(r, tc * e, 3)
    as_vehicle = torch.zeros_like(flat_size, dtype=torch.bool)
    as_vehicle[..., AgentType.VEHICLE] = True
    geom = geometry.index(rows)
    off = metrics.offroad(flat_state, flat_size, as_vehicle, geom)
    edge = road_edge_distance(flat_state.pos, flat_state.yaw, flat_size, off, geom)
    # traffic lights of each step, the boxes of the previous step
    before = (rows.unsqueeze(1), steps.unsqueeze(0) - 1)
    prev_pos, prev_yaw = gather_agents(traj.pos[before], idx), gather_agents(traj.yaw[before], idx)
    prev_obj = gather_agents(objects[before], idx)
    lights = (rows.unsqueeze(1), steps.clamp(max=batch.num_steps - 1).unsqueeze(0))
    tl = [x[lights].flatten(0, 1) for x in (batch.tl_valid, batch.tl_state, batch.tl_pos, batch.tl_dir)]
    types = gather_agents(batch.agent_type[rows].unsqueeze(1).expand(-1, tc, -1, -1), idx).flatten(0, 1)
    red = metrics.red_light_violation(_boxes(prev_pos.flatten(0, 1), prev_yaw.flatten(0, 1), prev_obj.flatten(0, 1)),
                                      _boxes(pos_e.flatten(0, 1), yaw_e.flatten(0, 1), obj_e.flatten(0, 1)),
                                      tl[0], tl[1], tl[2], types, tl_dir=tl[3])
    return {"distance_to_nearest_object": nearest, "time_to_collision": ttc,
            "distance_to_road_edge": edge.reshape(r, tc, e), "offroad": off.reshape(r, tc, e),
            "traffic_light_violation": red.reshape(r, tc, e)}


def realism_inputs(sim: SceneFeatures, log: SceneFeatures, rollouts: int, eval_mask: torch.Tensor,
                   is_vehicle: torch.Tensor) -> RealismInputs:
    """Scoring inputs from the features of S*K rollout rows (scene-major: row s*K + k) and of the S logs."""
    def per_scene(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, rollouts, *x.shape[1:])
    return RealismInputs(sim={n: per_scene(v) for n, v in sim.values.items()},
                         sim_valid={n: per_scene(v) for n, v in sim.valid.items()},
                         log=log.values, log_valid=log.valid, eval_mask=eval_mask, is_vehicle=is_vehicle)
