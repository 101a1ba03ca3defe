"""Run SUMO through libsumo at 10 Hz and record every road user and traffic-light link.

libsumo runs one simulation per process: :func:`simulate` runs each simulation in a fresh child
process under a stall watchdog (a rare SUMO step can loop forever), so callers may themselves be
workers of a (non-daemonic) process pool. Recorded tracks are box centres in the SUMO network frame
with headings in radians counter-clockwise from +x (SUMO angles are degrees clockwise from north,
positions are the front bumper). A track is split wherever the road user jumps (teleport) or
disappears for a step.
"""
from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trafficbots_gym.data.constants import DT, AgentType, TLState
from trafficbots_gym.synth.roadmap import TlLinks

# SUMO link state character -> TLState (r red, y yellow, g/G permissive/priority green, s right-on-red
# stop, u red+yellow, o blinking off-signal, O signal off).
SUMO_TL_STATE: dict[str, int] = {
    "r": TLState.STOP, "s": TLState.STOP, "u": TLState.STOP, "y": TLState.CAUTION,
    "g": TLState.GO, "G": TLState.GO, "o": TLState.FLASHING, "O": TLState.UNKNOWN,
}
_VCLASS_TYPE = {"bicycle": AgentType.CYCLIST, "pedestrian": AgentType.PEDESTRIAN}


@dataclass
class TrackLog:
    """Ragged tracks: track ``i`` covers steps ``start[i] .. start[i] + length[i] - 1`` without gaps."""

    object_id: np.ndarray
    """[N] int64 unique id."""
    type: np.ndarray
    """[N] int64 AgentType."""
    size: np.ndarray
    """[N, 3] float32 length, width, height (m)."""
    start: np.ndarray
    """[N] int64 first step."""
    length: np.ndarray
    """[N] int64 number of steps."""
    xy: np.ndarray
    """[M, 2] float64 box centre (m), all tracks concatenated."""
    yaw: np.ndarray
    """[M] float32 heading (rad), unwrapped within a track."""
    speed: np.ndarray
    """[M] float32 speed (m/s)."""

    @property
    def offsets(self) -> np.ndarray:
        """[N + 1] row of the first sample of each track in the concatenated arrays."""
        return np.concatenate([[0], np.cumsum(self.length)]).astype(np.int64)

    @property
    def num_tracks(self) -> int:
        return int(self.object_id.shape[0])


@dataclass
class SimLog:
    """A recorded run: ``n_step`` steps at 10 Hz of tracks and TL link states."""

    n_step: int
    tracks: TrackLog
    tl_state: np.ndarray
    """[n_step, K] int8 TLState of each link of the road map's ``TlLinks``."""


@dataclass(frozen=True)
class SimSpec:
    seed: int
    warmup: float
    """Seconds simulated before recording starts."""
    duration: float
    """Seconds recorded."""


def sumo_args(net: Path, routes: list[Path], spec: SimSpec) -> list[str]:
    """Command line of the simulation (10 Hz, IDM traffic, smooth lane changes, seeded).

    The route files carry the vehicle types they use (duarouter copies them). Pedestrians blocked
    for 20 s may pass each other, so crowds on walking areas never freeze a long run.
    """
    return ["sumo", "-n", str(net), "-r", ",".join(str(r) for r in routes),
            "--step-length", f"{DT}", "--seed", str(spec.seed), "--begin", "0",
            "--end", f"{spec.warmup + spec.duration + 1:.1f}", "--lanechange.duration", "3",
            "--step-method.ballistic", "true", "--pedestrian.model", "striping",
            "--pedestrian.striping.jamtime", "60",
            "--collision.action", "remove", "--collision.check-junctions", "true",
            "--time-to-teleport", "120", "--ignore-route-errors", "true", "--no-step-log", "true",
            "--no-warnings", "true", "--duration-log.disable", "true", "--threads", "1"]


class SimulationStalled(RuntimeError):
    """A simulation made no progress for ``STALL_SECONDS`` (a SUMO step that never returns)."""


STALL_SECONDS: float = 120.0
"""A single simulation step taking this long (normal steps take milliseconds) aborts the run."""


def simulate(net: Path, routes: list[Path], tl_links: TlLinks, spec: SimSpec) -> SimLog:
    """Run one seeded simulation and record ``spec.duration`` seconds after ``spec.warmup``.

    The simulation runs in a child process (libsumo allows one simulation per process) under a
    watchdog: :class:`SimulationStalled` is raised if it stops advancing for ``STALL_SECONDS``.
    """
    return run_watched(_simulate_here, (net, routes, tl_links, spec), STALL_SECONDS)


def run_watched(target: Callable[..., Any], args: tuple[Any, ...], stall_seconds: float) -> Any:
    """``target(*args, progress)`` in a child process; its result, or an error if it stalls or dies.

    ``progress`` is a shared counter the target increments while it works; the child is killed
    when the counter stays unchanged for ``stall_seconds``.
    """
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    progress = ctx.Value("q", 0, lock=False)
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_main, args=(target, args, progress, sender), daemon=True)
    child.start()
    sender.close()
    try:
        last, since = -1, time.monotonic()
        while not receiver.poll(0.2):
            if not child.is_alive() and not receiver.poll(0.2):
                raise RuntimeError(f"simulation process died (exit code {child.exitcode})")
            if progress.value != last:
                last, since = progress.value, time.monotonic()
            elif time.monotonic() - since > stall_seconds:
                raise SimulationStalled(f"no progress for {stall_seconds:.0f} s after {last} steps")
        ok, value = receiver.recv()
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    if not ok:
        raise value
    return value


def _child_main(target: Callable[..., Any], args: tuple[Any, ...], progress: Any, sender: Any) -> None:
    try:
        result = (True, target(*args, progress))
    except Exception as e:  # handed to the parent, which re-raises it
        result = (False, e)
    sender.send(result)
    sender.close()


def _simulate_here(net: Path, routes: list[Path], tl_links: TlLinks, spec: SimSpec, progress: Any) -> SimLog:
    import libsumo

    libsumo.start(sumo_args(net, routes, spec))
    try:
        _desync_traffic_lights(libsumo, np.random.default_rng([spec.seed, 0x746C]))
        n_warm, n_rec = int(round(spec.warmup / DT)), int(round(spec.duration / DT))
        for _ in range(n_warm):
            libsumo.simulationStep()
            progress.value += 1
        return _record(libsumo, tl_links, n_rec, progress)
    finally:
        libsumo.close()


def _desync_traffic_lights(sumo, rng: np.random.Generator) -> None:  # noqa: ANN001 (libsumo module)
    """Start every signal program at a random point of its cycle (netconvert gives all offset 0)."""
    for tl in sorted(sumo.trafficlight.getIDList()):
        logic = sumo.trafficlight.getAllProgramLogics(tl)[0]
        durations = np.array([p.duration for p in logic.phases], np.float64)
        t = rng.uniform(0.0, durations.sum())
        phase = int(np.searchsorted(np.cumsum(durations), t, side="right"))
        phase = min(phase, len(durations) - 1)
        sumo.trafficlight.setPhase(tl, phase)
        sumo.trafficlight.setPhaseDuration(tl, float(np.cumsum(durations)[phase] - t) + DT)


def _record(sumo, tl_links: TlLinks, n_step: int, progress: Any) -> SimLog:  # noqa: ANN001
    var = (sumo.VAR_POSITION, sumo.VAR_ANGLE, sumo.VAR_SPEED)
    samples: dict[str, list[tuple[int, float, float, float, float]]] = {}
    static: dict[str, tuple[int, float, float, float]] = {}
    tl_state = np.zeros((n_step, len(tl_links.link_index)), np.int8)
    lut = np.full(128, TLState.UNKNOWN, np.int8)
    for ch, st in SUMO_TL_STATE.items():
        lut[ord(ch)] = st
    domains = ((sumo.vehicle, "v"), (sumo.person, "p"))
    for step in range(n_step):
        sumo.simulationStep()
        progress.value += 1
        for domain, prefix in domains:
            for sid in domain.getIDList():
                key = prefix + sid
                if key not in static:
                    domain.subscribe(sid, var)
                    static[key] = (int(_VCLASS_TYPE.get(domain.getVehicleClass(sid), AgentType.VEHICLE)),
                                   domain.getLength(sid), domain.getWidth(sid), domain.getHeight(sid))
            for sid, res in domain.getAllSubscriptionResults().items():
                x, y = res[var[0]]
                if x == sumo.INVALID_DOUBLE_VALUE:
                    continue
                samples.setdefault(prefix + sid, []).append((step, x, y, res[var[1]], res[var[2]]))
        for k, tl in enumerate(tl_links.tl_ids):
            state = np.frombuffer(sumo.trafficlight.getRedYellowGreenState(tl).encode(), np.uint8)
            rows = tl_links.tl == k
            tl_state[step, rows] = lut[state[tl_links.link_index[rows]]]
    return SimLog(n_step, _tracks_from_samples(samples, static), tl_state)


def _tracks_from_samples(samples: dict[str, list[tuple[int, float, float, float, float]]],
                         static: dict[str, tuple[int, float, float, float]]) -> TrackLog:
    """Box centres and unwrapped headings; split at missing steps and at jumps (teleports)."""
    ids, types, sizes, starts, lengths, xys, yaws, speeds = [], [], [], [], [], [], [], []
    for key in sorted(samples, key=lambda k: (samples[k][0][0], k)):
        a = np.asarray(samples[key], np.float64)
        agent_type, length, width, height = static[key]
        yaw = np.deg2rad(90.0 - a[:, 3])
        xy = a[:, 1:3] - 0.5 * length * np.stack([np.cos(yaw), np.sin(yaw)], axis=-1)
        step_gap = np.diff(a[:, 0]) != 1
        jump = np.linalg.norm(np.diff(xy, axis=0), axis=-1) > 2.0 + 1.5 * DT * np.maximum(a[1:, 4], a[:-1, 4])
        cuts = np.concatenate([[0], np.nonzero(step_gap | jump)[0] + 1, [len(a)]])
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            ids.append(len(ids))
            types.append(agent_type)
            sizes.append((length, width, height))
            starts.append(int(a[lo, 0]))
            lengths.append(hi - lo)
            xys.append(xy[lo:hi])
            yaws.append(np.unwrap(yaw[lo:hi]))
            speeds.append(a[lo:hi, 4])
    if not ids:
        return TrackLog(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.float32),
                        np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0, np.float32),
                        np.zeros(0, np.float32))
    return TrackLog(np.asarray(ids, np.int64), np.asarray(types, np.int64), np.asarray(sizes, np.float32),
                    np.asarray(starts, np.int64), np.asarray(lengths, np.int64), np.concatenate(xys),
                    np.concatenate(yaws).astype(np.float32), np.concatenate(speeds).astype(np.float32))
