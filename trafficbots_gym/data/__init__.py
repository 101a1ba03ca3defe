"""Scene data layer: the TrafficBots H5 format, its typed scene, readers, writers and producers."""
from trafficbots_gym.data.batch import SceneBatch
from trafficbots_gym.data.h5io import SceneFormatError, SceneReader, write_index, write_scenes
from trafficbots_gym.data.scene import Scene, SceneValidationError

__all__ = ["Scene", "SceneBatch", "SceneFormatError", "SceneReader", "SceneValidationError", "write_index",
           "write_scenes"]
