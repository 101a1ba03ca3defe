"""Colour palette of the top-down renderer (RGB uint8 triples).

Map and traffic-light colours follow the reference TrafficBots visualisation (Tango palette,
trafficbots_spec.md section 7); a road-surface band under the vehicle lanes is added so the drivable
area reads at a glance. Agents are filled by type, outlined by role, and the ego is filled cyan.
"""
from __future__ import annotations

from trafficbots_gym.data.constants import AgentRole, AgentType, MapType, TLState

RGB = tuple[int, int, int]

BACKGROUND: RGB = (0, 0, 0)
ROAD_SURFACE: RGB = (40, 40, 44)
BIKE_SURFACE: RGB = (52, 40, 30)

MAP_COLORS: dict[MapType, RGB] = {
    MapType.FREEWAY: (255, 255, 255),
    MapType.SURFACE_STREET: (66, 62, 64),
    MapType.STOP_SIGN: (209, 92, 0),
    MapType.BIKE_LANE: (143, 89, 2),
    MapType.ROAD_EDGE_BOUNDARY: (32, 74, 135),
    MapType.ROAD_EDGE_MEDIAN: (92, 53, 102),
    MapType.BROKEN: (252, 233, 79),
    MapType.SOLID_SINGLE: (255, 0, 255),
    MapType.DOUBLE: (164, 0, 0),
    MapType.SPEED_BUMP: (78, 154, 6),
    MapType.CROSSWALK: (114, 159, 207),
}
"""Polyline colour per map class (reference palette)."""

TL_COLORS: dict[TLState, RGB] = {
    TLState.UNKNOWN: (186, 189, 182),
    TLState.STOP: (239, 41, 41),
    TLState.CAUTION: (252, 200, 0),
    TLState.GO: (0, 230, 64),
    TLState.FLASHING: (173, 80, 230),
}
"""Traffic-light state colours: unknown grey, stop red, caution yellow, go green, flashing violet."""

AGENT_TYPE_COLORS: dict[AgentType, RGB] = {
    AgentType.VEHICLE: (238, 238, 236),
    AgentType.PEDESTRIAN: (252, 175, 62),
    AgentType.CYCLIST: (173, 127, 168),
}
"""Box fill per agent type (vehicles light grey as in the reference, pedestrians orange, cyclists plum)."""

ROLE_COLORS: dict[AgentRole, RGB] = {
    AgentRole.SDC: (0, 255, 255),
    AgentRole.INTEREST: (78, 154, 6),
    AgentRole.PREDICT: (255, 0, 255),
}
"""Box outline per role; the lowest set role bit wins, as in the reference."""

EGO: RGB = (0, 200, 255)
EGO_OUTLINE: RGB = (255, 255, 255)
EGO_TRAIL: RGB = (0, 140, 190)
GOAL: RGB = (255, 0, 255)
HEADING_MARK: RGB = (0, 0, 0)
AGENT_OUTLINE: RGB = (20, 20, 20)
HUD_TEXT: RGB = (255, 255, 255)
HUD_PANEL: tuple[int, int, int, int] = (0, 0, 0, 170)
SCALE_BAR: RGB = (220, 220, 220)
