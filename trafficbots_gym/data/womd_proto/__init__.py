"""Message classes for ``waymo.open_dataset.Scenario``, built at import time without protoc.

The schema is written here as a ``FileDescriptorProto`` (field names and numbers of Waymo's
``scenario.proto`` / ``map.proto``, proto2) and turned into classes by ``message_factory``; no
TensorFlow, ``waymo-open-dataset`` or generated ``_pb2`` module is needed. Only the fields the
packer reads are declared; everything else in a record (lane boundaries, neighbours, lidar,
camera tokens, ...) is kept by protobuf as unknown fields.

Enum-typed fields (object type, lane type, signal state, ...) are declared as ``int32``: the wire
encoding is identical, but an out-of-range value stays visible as its number instead of being
moved to the unknown fields and read back as the default, so the converter can report it.

The classes live in private descriptor pools, so they never clash with a real Waymo package
imported in the same process.

``ScenarioColumns`` is a second, wire-compatible reading of the same bytes for speed: every map
polyline / polygon (``repeated MapPoint``) is declared as one ``PointColumns`` message with
``repeated double x, y, z``. Protobuf merges repeated occurrences of a singular message field, so
parsing concatenates the points into three columns that convert to numpy in one call. The columns
line up only if every point sets all three coordinates; readers must check the lengths.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "waymo.open_dataset"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
            "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING}

# message -> [(field name, number, type, repeated)]; a type not in _SCALARS is a message name.
_SCHEMA: dict[str, list[tuple[str, int, str, bool]]] = {
    "MapPoint": [("x", 1, "double", False), ("y", 2, "double", False), ("z", 3, "double", False)],
    "ObjectState": [
        ("center_x", 2, "double", False), ("center_y", 3, "double", False), ("center_z", 4, "double", False),
        ("length", 5, "float", False), ("width", 6, "float", False), ("height", 7, "float", False),
        ("heading", 8, "float", False), ("velocity_x", 9, "float", False), ("velocity_y", 10, "float", False),
        ("valid", 11, "bool", False)],
    "Track": [("id", 1, "int32", False), ("object_type", 2, "int32", False), ("states", 3, "ObjectState", True)],
    "TrafficSignalLaneState": [("lane", 1, "int64", False), ("state", 2, "int32", False),
                               ("stop_point", 3, "MapPoint", False)],
    "DynamicMapState": [("lane_states", 1, "TrafficSignalLaneState", True)],
    "LaneCenter": [("speed_limit_mph", 1, "double", False), ("type", 2, "int32", False),
                   ("interpolating", 3, "bool", False), ("polyline", 8, "MapPoint", True),
                   ("entry_lanes", 9, "int64", True), ("exit_lanes", 10, "int64", True)],
    "RoadLine": [("type", 1, "int32", False), ("polyline", 2, "MapPoint", True)],
    "RoadEdge": [("type", 1, "int32", False), ("polyline", 2, "MapPoint", True)],
    "StopSign": [("lane", 1, "int64", True), ("position", 2, "MapPoint", False)],
    "Crosswalk": [("polygon", 1, "MapPoint", True)],
    "SpeedBump": [("polygon", 1, "MapPoint", True)],
    "Driveway": [("polygon", 1, "MapPoint", True)],
    "MapFeature": [("id", 1, "int64", False), ("lane", 3, "LaneCenter", False), ("road_line", 4, "RoadLine", False),
                   ("road_edge", 5, "RoadEdge", False), ("stop_sign", 7, "StopSign", False),
                   ("crosswalk", 8, "Crosswalk", False), ("speed_bump", 9, "SpeedBump", False),
                   ("driveway", 10, "Driveway", False)],
    "RequiredPrediction": [("track_index", 1, "int32", False), ("difficulty", 2, "int32", False)],
    "Scenario": [
        ("scenario_id", 5, "string", False), ("timestamps_seconds", 1, "double", True),
        ("current_time_index", 10, "int32", False), ("tracks", 2, "Track", True),
        ("dynamic_map_states", 7, "DynamicMapState", True), ("map_features", 8, "MapFeature", True),
        ("sdc_track_index", 6, "int32", False), ("objects_of_interest", 4, "int32", True),
        ("tracks_to_predict", 11, "RequiredPrediction", True)],
}
_ONEOFS = {"MapFeature": ("feature_data", {"lane", "road_line", "road_edge", "stop_sign", "crosswalk",
                                           "speed_bump", "driveway"})}


_POINT_FIELDS = {"LaneCenter": "polyline", "RoadLine": "polyline", "RoadEdge": "polyline", "Crosswalk": "polygon",
                 "SpeedBump": "polygon", "Driveway": "polygon"}


def file_descriptor(columnar_points: bool = False) -> descriptor_pb2.FileDescriptorProto:
    """The ``FileDescriptorProto`` of the schema subset above (``columnar_points``: see module doc)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="trafficbots_womd_scenario.proto", package=PACKAGE,
                                             syntax="proto2")
    for msg_name, fields in _SCHEMA.items():
        msg = fdp.message_type.add(name=msg_name)
        oneof_name, oneof_members = _ONEOFS.get(msg_name, (None, set()))
        if oneof_name:
            msg.oneof_decl.add(name=oneof_name)
        for name, number, type_name, repeated in fields:
            field = msg.field.add(name=name, number=number,
                                  label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{type_name}"
            if name in oneof_members:
                field.oneof_index = 0
            if columnar_points and _POINT_FIELDS.get(msg_name) == name:
                field.label = _F.LABEL_OPTIONAL
                field.type_name = f".{PACKAGE}.PointColumns"
    if columnar_points:
        columns = fdp.message_type.add(name="PointColumns")
        for number, name in enumerate("xyz", start=1):
            columns.field.add(name=name, number=number, label=_F.LABEL_REPEATED, type=_F.TYPE_DOUBLE)
    return fdp


def _pool(columnar_points: bool) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor(columnar_points))
    return pool


_POOL, _COLUMNS_POOL = _pool(False), _pool(True)


def _message_class(name: str, pool: descriptor_pool.DescriptorPool = _POOL) -> type:
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


Scenario = _message_class("Scenario")
Track = _message_class("Track")
ObjectState = _message_class("ObjectState")
MapFeature = _message_class("MapFeature")
MapPoint = _message_class("MapPoint")
DynamicMapState = _message_class("DynamicMapState")
TrafficSignalLaneState = _message_class("TrafficSignalLaneState")
RequiredPrediction = _message_class("RequiredPrediction")
ScenarioColumns = _message_class("Scenario", _COLUMNS_POOL)

__all__ = ["Scenario", "Track", "ObjectState", "MapFeature", "MapPoint", "DynamicMapState",
           "TrafficSignalLaneState", "RequiredPrediction", "ScenarioColumns", "file_descriptor"]
