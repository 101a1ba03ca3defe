"""Scene source of the environments: which H5 scenes episodes run on, how one is chosen and read.

A source is the embedded default scenes of a split, an H5 file, a folder of shards, or a list of them.
Episodes pick a scene with the env's ``np_random`` or by ``reset(options={"scene_index": i})`` /
``{"scenario_id": s}``. Only the keys the simulator needs are read (map, full agent view, TL stops),
optionally on a background thread so that the next episode's scene is ready when a reset comes, and
optionally kept in memory (``cache_mb``, LRU) so that a scene seen before is not read and checked again.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from trafficbots_gym.data.batch import scene_to_arrays
from trafficbots_gym.data.h5io import SceneFormatError, SceneReader
from trafficbots_gym.data.scene import AgentTracks, MapPolylines, Scene, TrafficLightStops
from trafficbots_gym.env.config import SceneSpec

SceneArrays = dict[str, np.ndarray]
"""One scene as the per-scene arrays of a ``SceneBatch`` (see ``scene_to_arrays``)."""

_KEYS: list[str] = MapPolylines.keys("map") + AgentTracks.keys("agent") + TrafficLightStops.keys("tl_stop")
"""The H5 datasets an episode needs: map, full (91-step) agent view with goals, TL stop points."""


def default_scenes(split: str) -> Path:
    """The embedded default scene file of ``split``."""
    try:
        from trafficbots_gym.assets import default_scenes_path
    except ImportError as e:
        raise FileNotFoundError("this installation has no embedded default scenes (trafficbots_gym.assets); "
                                "pass scenes=<H5 file, folder of shards or list>") from e
    return Path(default_scenes_path(split))


class SceneSource:
    """Random access to the episode scenes of an env (pickles without its cache; reads lazily).

    ``cache_mb`` > 0 keeps up to that many MiB of read scenes (least recently used out first; about 0.6
    MiB per full-size scene); cached arrays are read-only and shared by every load of their scene.
    """

    def __init__(self, scenes: SceneSpec = None, *, split: str = "validation", validate: bool = True,
                 cache_mb: float = 0.0) -> None:
        source = default_scenes(split) if scenes is None else scenes
        self.reader = SceneReader(source, validate=False)
        self.validate = validate
        if isinstance(cache_mb, bool) or not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb!r}")
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[int, tuple[SceneArrays, int]] = OrderedDict()   # index -> (arrays, bytes)
        self._cached = 0
        self._lock = threading.Lock()    # loads come from the env and from its prefetch thread
        if len(self.reader) == 0:
            raise SceneFormatError(self.describe(), "holds no scenes")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_cache=OrderedDict(), _cached=0, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def cached_scenes(self) -> int:
        """Number of scenes held in memory."""
        return len(self._cache)

    def describe(self) -> str:
        """The scene files, for messages."""
        files = [str(p) for p in self.reader.files]
        return files[0] if len(files) == 1 else f"{len(files)} files in {sorted({str(Path(f).parent) for f in files})}"

    def __len__(self) -> int:
        return len(self.reader)

    def scenario_id(self, index: int) -> str:
        return self.reader.scenario_ids[index]

    def choose(self, np_random: np.random.Generator, options: Mapping[str, Any] | None = None) -> int:
        """Index of the next episode's scene: ``options["scene_index"]``, ``options["scenario_id"]``, else random."""
        options = options or {}
        if "scene_index" in options and "scenario_id" in options:
            raise ValueError("reset options: give either 'scene_index' or 'scenario_id', not both")
        if "scene_index" in options:
            return self.check_index(options["scene_index"])
        if "scenario_id" in options:
            return self.reader.index_of(str(options["scenario_id"]))
        return int(np_random.integers(len(self)))

    def scene_key(self, index: int) -> tuple[str, str, int]:
        """What identifies scene ``index``'s data across sources: its file (resolved path and modification
        time, so a rewritten file gives new keys) and group."""
        path, group = self.reader.locate(index)
        resolved = Path(path).resolve()
        return str(resolved), group, resolved.stat().st_mtime_ns

    def check_index(self, index: Any) -> int:
        """``index`` as an int in range, else ValueError naming the source."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise ValueError(f"scene_index must be an int in [0, {len(self)}) for {self.describe()}, got {index!r}")
        return int(index)

    def load(self, index: int) -> SceneArrays:
        """Scene ``index``'s ``SceneBatch`` arrays, from the cache or read now; errors name file, scene and key."""
        if self.cache_bytes:
            with self._lock:
                if index in self._cache:
                    self._cache.move_to_end(index)
                    return self._cache[index][0]
        arrays = self._read(index)
        if self.cache_bytes:
            self._keep(index, arrays)
        return arrays

    def _keep(self, index: int, arrays: SceneArrays) -> None:
        """Cache ``arrays`` (made read-only) and evict least recently used scenes beyond the budget."""
        size = sum(a.nbytes for a in arrays.values())
        if size > self.cache_bytes:
            return
        for a in arrays.values():
            a.flags.writeable = False
        with self._lock:
            if index in self._cache:
                return
            self._cache[index] = (arrays, size)
            self._cached += size
            while self._cached > self.cache_bytes:
                _, (_, evicted) = self._cache.popitem(last=False)
                self._cached -= evicted

    def _read(self, index: int) -> SceneArrays:
        """Read and check scene ``index``."""
        path, group = self.reader.locate(index)
        try:
            arrays, attrs = self.reader.read_arrays(index, _KEYS)
        except SceneFormatError as e:
            if e.key is not None and e.key.startswith("agent/"):
                raise SceneFormatError(path, "no full agent view (a testing-split scene holds only the 11-step "
                                       "history); the environment needs the logged future", group, e.key) from e
            raise
        attrs.setdefault("scenario_id", group)
        try:
            scene = Scene.from_arrays(arrays, attrs)
        except (TypeError, ValueError) as e:
            raise SceneFormatError(path, f"malformed scene: {e}", scene=group) from e
        if self.validate:
            where = f"{path} group {group}"
            scene.map.validate(scene.scenario_id, "map", where)
            assert scene.agent is not None and scene.tl_stop is not None
            scene.agent.validate(scene.scenario_id, "agent", where)
            scene.tl_stop.validate(scene.scenario_id, "tl_stop", where)
        return scene_to_arrays(scene)

    def close(self) -> None:
        self.reader.close()
        with self._lock:
            self._cache.clear()
            self._cached = 0


class SceneLoader:
    """Loads scenes of a ``SceneSource``, optionally ahead of time on one background thread.

    ``prefetch(i)`` starts reading scene ``i``; ``load(i)`` returns it, from the prefetch when one is
    pending, else read now. Prefetches of a scene already pending share its one read (the arrays are
    read-only), so many rows drawing from few scenes cost one read per distinct scene. Errors of a
    prefetch surface at the ``load`` of that scene.
    """

    def __init__(self, source: SceneSource, *, background: bool = True) -> None:
        self.source = source
        self.background = background
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, tuple[Future[SceneArrays], int]] = {}   # index -> (read, requests)

    def prefetch(self, index: int) -> None:
        if not self.background:
            return
        if index in self._pending:
            future, requests = self._pending[index]
            self._pending[index] = (future, requests + 1)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trafficbots-scenes")
        self._pending[index] = (self._pool.submit(self.source.load, index), 1)

    def load(self, index: int) -> SceneArrays:
        if index in self._pending:
            future = self._release(index)
            return future.result()
        return self.source.load(index)

    @property
    def pending(self) -> int:
        """Number of prefetches not yet taken by ``load``."""
        return sum(requests for _, requests in self._pending.values())

    def discard(self, index: int) -> None:
        """Drop one pending prefetch of scene ``index`` (a pre-drawn choice that will not be used); the read
        is cancelled when no other prefetch of that scene is pending."""
        if index in self._pending:
            self._release(index, cancel_last=True)

    def cancel(self) -> None:
        """Forget every pending prefetch."""
        for future, _ in self._pending.values():
            future.cancel()
        self._pending = {}

    def _release(self, index: int, cancel_last: bool = False) -> Future[SceneArrays]:
        """Take one request of ``index``'s pending read; the last one removes it (and may cancel it)."""
        future, requests = self._pending[index]
        if requests > 1:
            self._pending[index] = (future, requests - 1)
        else:
            del self._pending[index]
            if cancel_last:
                future.cancel()
        return future

    def close(self) -> None:
        self.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.source.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "background": self.background}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"], background=state["background"])  # type: ignore[misc]

