"""Data shipped with the package: the embedded synthetic default dataset (see ``scenes/GENERATED.md``)."""
from __future__ import annotations

from pathlib import Path

from trafficbots_gym.data.constants import SPLITS

SCENES_DIR: Path = Path(__file__).resolve().parent / "scenes"


def default_scenes_path(split: str = "training") -> Path:
    """Path of the embedded synthetic scenes of ``split`` (``training``, ``validation`` or ``testing``).

    The files are regular TrafficBots H5 scene files generated from SUMO by ``trafficbots-synth``;
    ``scenes/GENERATED.md`` records the exact commands and seeds.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = SCENES_DIR / f"{split}.h5"
    if not path.is_file():
        raise FileNotFoundError(f"embedded {split} scenes missing: {path} (regenerate them with the commands "
                                f"in {SCENES_DIR / 'GENERATED.md'})")
    return path
