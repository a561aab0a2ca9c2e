"""Object stores' modification times in UTC epoch seconds, whatever the local time zone.

Beam 2.77 turns an object's time (an aware UTC datetime from the storage client) into seconds with
`time.mktime(updated.timetuple()) - time.timezone`: mktime reads the UTC wall clock as local time,
and `time.timezone` takes off Python's standard offset. That is right only where the offset mktime
uses is that one. For `gs://` and `azfs://` the clients' UTC (`datetime.timezone`) gives no
daylight-saving flag (tm_isdst -1), so mktime applies local summer time: a launcher in summer time
reads such a time a shift early (an hour; half an hour on Lord Howe Island), workers in UTC read it
right. For `s3://` botocore gives dateutil's `tzutc()` (tm_isdst 0), so mktime uses the zone's
offset flagged as standard time, which is not always `time.timezone`: in Europe/Dublin (where tzdata
flags winter time as the daylight-saving one) it is an hour early all year; where the standard
offset has changed since, an hour off (Europe/Moscow 2011 to 2014, early; Africa/Casablanca until
2018, late). Local files' times are right.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems

_NEAR = 3 * 3600  # seconds: more than any daylight-saving shift (Antarctica/Troll's is 2 hours)


def _offsets_near(instant: int) -> set[int]:
    """The UTC offsets (seconds east) the local zone has within _NEAR of `instant`."""
    return {time.localtime(instant + k).tm_gmtoff for k in (-_NEAR, 0, _NEAR)}


def _flag_unknown_errors(utc: int) -> set[int]:
    """How far Beam's seconds for the UTC time `utc` (whole seconds) can be off here for a `gs://` or
    `azfs://` object (tm_isdst -1): mktime takes its UTC wall clock as local time at an offset the zone
    has for that wall time, less the standard one. In the hour repeated when clocks go back both
    offsets fit, and glibc picks by its previous call; in the hour skipped when they go forward none
    does, and either neighbour is taken."""
    near = _offsets_near(utc + time.timezone)  # about where the local instants of that wall time are
    fitting = {offset for offset in near if time.localtime(utc - offset).tm_gmtoff == offset}
    return {-offset - time.timezone for offset in fitting or near}


def _standard_flag_errors(utc: int) -> set[int]:
    """How far Beam's seconds for the UTC time `utc` (whole seconds) can be off here for an `s3://`
    object (tm_isdst 0): mktime takes its UTC wall clock as local time at an offset flagged standard,
    less Python's standard one: the offset the zone has for that wall time if flagged standard, else a
    neighbouring standard one. Where a standard offset went back (Moscow, October 2014) the repeated
    hour fits two, and glibc picks by its previous call."""
    near = _offsets_near(utc + time.timezone)
    standard = {offset for offset in near if (t := time.localtime(utc - offset)).tm_gmtoff == offset and not t.tm_isdst}
    try:
        read = round(time.mktime(time.gmtime(utc)[:8] + (0,)))
    except OverflowError:  # mktime out of range: Beam fails there too
        return set()
    return {read - time.timezone - utc} | {-offset - time.timezone for offset in standard}


# Per scheme, the errors Beam's conversion can make for a UTC time in the local zone.
BEAM_ERRORS: dict[str, Callable[[int], set[int]]] = {
    "gs": _flag_unknown_errors,
    "azfs": _flag_unknown_errors,
    "s3": _standard_flag_errors,
}


def utc_times(path: str, seconds: float | None) -> tuple[float | None, ...]:
    """The UTC epoch seconds that Beam's `seconds` for `path` stand for, fraction kept: Beam's error
    undone for `gs://`, `azfs://` and `s3://`, other paths as they are. The errors Beam makes near
    `seconds` are tried, and each that Beam makes for the time it gives is kept. One time, or two a
    shift apart, earlier first, where two times give the same seconds: for `gs://` and `azfs://` an
    object written in the hours around when the UTC clock shows the local hour that the spring change
    skips (Berlin: 01:00 to 04:00 UTC on the last Sunday of March)."""
    errors_at = BEAM_ERRORS.get(FileSystems.get_scheme(path))
    if seconds is None or errors_at is None:
        return (seconds,)
    whole = math.floor(seconds)
    candidates = set().union(*(errors_at(whole + k) for k in (-_NEAR, 0, _NEAR)))
    found = sorted(seconds - error for error in candidates if error in errors_at(whole - error))
    return tuple(found) or (seconds,)
