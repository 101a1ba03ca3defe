"""Per-record errors of the producers: reported and skipped, never fatal for the rest of a shard."""
from __future__ import annotations

from dataclasses import dataclass


class ScenarioParseError(ValueError):
    """One source record cannot be turned into a scenario; names the file, record and field."""

    def __init__(self, path: str, record: str | int | None, field: str | None, message: str) -> None:
        where = [str(path)]
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}")
        self.path, self.record, self.field, self.message = str(path), record, field, message


@dataclass(frozen=True)
class RecordError:
    """A record that was skipped, with the error that explains why (yielded by source readers)."""

    error: ScenarioParseError

    def __str__(self) -> str:
        return str(self.error)
