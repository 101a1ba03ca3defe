"""trafficbots-gym: closed-loop driving on WOMD-format scenes with a learned TrafficBots background."""
from __future__ import annotations

__version__ = "0.1.0"
