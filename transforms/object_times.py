"""Object stores' modification times in UTC epoch seconds, whatever the local time zone.

Beam 2.77 turns a `gs://` or `azfs://` object's time (an aware UTC datetime from the storage
client) into seconds with `time.mktime(updated.timetuple()) - time.timezone`. The clients' UTC
(`datetime.timezone`) gives no daylight-saving flag (tm_isdst -1), so mktime reads the UTC wall clock
as local time with the local summer time applied, and `time.timezone` takes off only the standard
offset: a launcher in summer time reads such a time a shift early (an hour; half an hour on Lord
Howe Island), workers in UTC read it right. `s3://` times come from botocore as dateutil's `tzutc()`
(tm_isdst 0), which mktime takes as standard time: right already, as are local files' times.
"""

from __future__ import annotations

import math
import time

from apache_beam.io.filesystems import FileSystems

SHIFTED_SCHEMES = frozenset({"gs", "azfs"})  # Beam's file systems whose times go through the local zone
_NEAR = 3 * 3600  # seconds: more than any daylight-saving shift (Antarctica/Troll's is 2 hours)


def _offsets_near(instant: int) -> set[int]:
    """The UTC offsets (seconds east) the local zone has within _NEAR of `instant`."""
    return {time.localtime(instant + k).tm_gmtoff for k in (-_NEAR, 0, _NEAR)}


def _errors(utc: int) -> set[int]:
    """How far Beam's seconds for the UTC time `utc` (whole seconds) can be off here: mktime takes its
    UTC wall clock as local time at an offset the zone has for that wall time, less the standard one.
    In the hour repeated when clocks go back both offsets fit, and glibc picks by its previous call;
    in the hour skipped when they go forward none does, and either neighbour is taken."""
    near = _offsets_near(utc + time.timezone)  # about where the local instants of that wall time are
    fitting = {offset for offset in near if time.localtime(utc - offset).tm_gmtoff == offset}
    return {-offset - time.timezone for offset in fitting or near}


def utc_times(path: str, seconds: float | None) -> tuple[float | None, ...]:
    """The UTC epoch seconds that Beam's `seconds` for `path` stand for, fraction kept: Beam's error
    undone for `gs://` and `azfs://`, other paths as they are. One time, or, for an object written in
    the hours around when the UTC clock shows the local hour that the spring change skips (Berlin:
    01:00 to 04:00 UTC on the last Sunday of March), two a shift apart, earlier first: there two
    times can give the same seconds."""
    if seconds is None or FileSystems.get_scheme(path) not in SHIFTED_SCHEMES:
        return (seconds,)
    whole = math.floor(seconds)
    errors = {-offset - time.timezone for offset in _offsets_near(whole + time.timezone)}
    found = sorted(seconds - error for error in errors if error in _errors(whole - error))
    return tuple(found) or (seconds,)
