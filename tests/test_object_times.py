"""Object stores' times in UTC whatever the local zone: Beam's own conversions (GcsIO, BlobStorageIO,
S3IO `_updated_to_seconds`, run as they are) fed the datetimes their storage clients give, in zones
with and without daylight saving, undone by transforms.object_times."""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from apache_beam.io.aws.s3io import S3IO
from apache_beam.io.azure.blobstorageio import BlobStorageIO
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.gcp.gcsio import GcsIO
from dateutil.parser import parse
from dateutil.tz import tzutc

from pipeline.plan import describe_inputs
from transforms.object_times import utc_times
from transforms.read import PlannedFile

SUMMER = datetime(2026, 7, 1, 12, 0, 0, 123456, tzinfo=UTC)
WINTER = datetime(2026, 1, 15, 12, 0, 0, 654321, tzinfo=UTC)
# How far Beam 2.77 reads a gs:// or azfs:// time off in each zone: the zone's summer-time shift.
BEAM_SHIFTS = {
    "Europe/Berlin": {SUMMER: -3600, WINTER: 0},
    "America/New_York": {SUMMER: -3600, WINTER: 0},
    "Australia/Lord_Howe": {SUMMER: 0, WINTER: -1800},  # its summer is January, half an hour
    "UTC": {SUMMER: 0, WINTER: 0},
    "Asia/Kolkata": {SUMMER: 0, WINTER: 0},  # +05:30 all year
}


def _seconds(moment: datetime) -> float:
    return calendar.timegm(moment.utctimetuple()) + moment.microsecond / 1e6


def _gcs(moment: datetime) -> float:
    """Beam's seconds for a gs:// object: google-cloud-storage gives `updated` in datetime.timezone.utc
    (datetime.UTC)."""
    return GcsIO._updated_to_seconds(moment.astimezone(UTC))


def _azure(moment: datetime) -> float:
    """Beam's seconds for an azfs:// blob: azure-storage-blob reads Last-Modified (RFC 1123) into a
    datetime in datetime.timezone(timedelta(0)) (its deserialize_rfc)."""
    return BlobStorageIO._updated_to_seconds(moment.astimezone(timezone(timedelta(0))))


@pytest.mark.parametrize("zone", BEAM_SHIFTS)
@pytest.mark.parametrize("moment", [SUMMER, WINTER], ids=["july", "january"])
@pytest.mark.parametrize("scheme, beam", [("gs", _gcs), ("azfs", _azure)])
def test_object_store_times_come_back_in_utc_in_any_zone(local_zone, zone, moment, scheme, beam):
    local_zone(zone)
    seconds = beam(moment)
    assert seconds - _seconds(moment) == BEAM_SHIFTS[zone][moment]  # Beam's error, as it is today
    assert utc_times(f"{scheme}://kb/a.parquet", seconds) == (_seconds(moment),)


# How far Beam 2.77 reads an s3:// time off: mktime takes the UTC wall clock at the zone's offset
# flagged standard (tm_isdst 0), less Python's `time.timezone`; the two differ in some zones.
S3_2012 = datetime(2012, 1, 15, 12, 0, 0, 123000, tzinfo=UTC)
S3_SHIFTS = {
    **{(zone, moment): 0 for zone in BEAM_SHIFTS for moment in (SUMMER, WINTER)},
    ("Europe/Dublin", WINTER): -3600,  # tzdata flags Irish winter time as the daylight-saving one
    ("Europe/Dublin", SUMMER): -3600,
    ("Europe/Moscow", S3_2012): -3600,  # UTC+4 then, UTC+3 now (time.timezone)
    ("Africa/Casablanca", S3_2012): 3600,  # UTC+0 then, UTC+1 now
}


def _s3(moment: datetime) -> float:
    """Beam's seconds for an s3:// object: botocore parses its time with dateutil into tzutc()."""
    return S3IO._updated_to_seconds(moment.astimezone(tzutc()))


@pytest.mark.parametrize("zone, moment", S3_SHIFTS, ids=[f"{zone}-{moment:%Y-%m}" for zone, moment in S3_SHIFTS])
def test_s3_times_come_back_in_utc_in_any_zone(local_zone, zone, moment):
    local_zone(zone)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    for parsed in (parse(f"{text}Z"), parse(moment.strftime("%a, %d %b %Y %H:%M:%S GMT"), tzinfos={"GMT": tzutc()})):
        # as botocore.utils.parse_timestamp does, for ListObjectsV2's ISO 8601 and HeadObject's RFC 1123
        seconds = S3IO._updated_to_seconds(parsed)
        assert seconds - _seconds(parsed) == S3_SHIFTS[zone, moment]  # Beam's error, as it is today
        assert utc_times("s3://kb/a.parquet", seconds) == (_seconds(parsed),)


def test_local_files_and_missing_times_are_taken_as_they_are(local_zone):
    local_zone("Europe/Dublin")
    assert utc_times("/data/a.parquet", 1_790_000_000.25) == (1_790_000_000.25,)
    assert utc_times("gs://kb/a.parquet", None) == (None,)
    assert utc_times("s3://kb/a.parquet", None) == (None,)


def test_near_the_spring_change_a_time_fits_two_readings_and_the_true_one_is_among_them(local_zone):
    """Berlin's clocks skip 02:00-03:00 on 29 March 2026: Beam's seconds for an object written
    between 01:00 and 04:00 UTC fit two times an hour apart; outside those hours, one."""
    local_zone("Europe/Berlin")
    for hour, true_one in ((0, None), (1, 0), (2, 0), (3, 1), (4, None)):
        moment = datetime(2026, 3, 29, hour, 30, 0, 250000, tzinfo=UTC)
        times = utc_times("gs://kb/a.parquet", _gcs(moment))
        if true_one is None:
            assert times == (_seconds(moment),)
        else:
            assert len(times) == 2 and times[1] - times[0] == 3600 and times[true_one] == _seconds(moment)


def test_in_the_hour_clocks_go_back_either_reading_beam_gives_is_undone(local_zone):
    """Berlin's 02:00-03:00 repeats on 25 October 2026: mktime (glibc) reads that wall time as
    summer or winter time after a call for a summer or a winter date. Either way one true time."""
    local_zone("Europe/Berlin")
    for hour in (1, 2, 3):
        moment = datetime(2026, 10, 25, hour, 30, 0, 250000, tzinfo=UTC)
        readings = set()
        for before in (SUMMER, WINTER):
            time.mktime(before.timetuple())
            readings.add(_gcs(moment))
        assert readings <= {_seconds(moment), _seconds(moment) - 3600}
        assert {utc_times("gs://kb/a.parquet", seconds) for seconds in readings} == {(_seconds(moment),)}


def test_in_the_hour_moscow_went_back_to_utc_plus_3_either_s3_reading_beam_gives_is_undone(local_zone):
    """Moscow's 01:00-02:00 repeated on 26 October 2014, both times standard (UTC+4, then UTC+3):
    mktime with tm_isdst 0 reads that wall time at either offset, by its previous call. Either way one true
    time; Beam reads the hours before an hour early, as in all of 2012."""
    local_zone("Europe/Moscow")
    for hour, shifts in ((0, {-3600}), (1, {-3600, 0}), (2, {0})):
        moment = datetime(2014, 10, 26, hour, 30, 0, 250000, tzinfo=UTC)
        readings = set()
        for before in (S3_2012, WINTER):
            time.mktime(before.timetuple())
            readings.add(_s3(moment))
        assert {seconds - _seconds(moment) for seconds in readings} == shifts
        assert {utc_times("s3://kb/a.parquet", seconds) for seconds in readings} == {(_seconds(moment),)}


def _launcher_and_workers(local_zone, zone: str, path: str, seconds_of, moments: list) -> tuple[list, list]:
    """The file at each moment as a launcher in `zone` and a worker in UTC find it."""
    found = []
    for where in (zone, "UTC"):
        local_zone(where)
        found.append([PlannedFile.found(path, FileMetadata(path, 100, seconds_of(m))) for m in moments])
    return found[0], found[1]


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
def test_a_launcher_in_any_zone_and_workers_in_utc_agree_on_every_time_of_a_year(local_zone, zone):
    """Every 10 minutes of 2026 (a microsecond fraction too): the launcher's time is the true UTC
    time but in the three hours around the spring change (where it also fits the truth), and
    workers in UTC take the file as planned."""
    path = "gs://kb/a.parquet"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    moments = [start + timedelta(minutes=10 * i, microseconds=i % 1_000_000) for i in range(6 * 24 * 365)]
    launcher, workers = _launcher_and_workers(local_zone, zone, path, _gcs, moments)
    assert [w.times() for w in workers] == [(_seconds(m),) for m in moments]
    assert all(planned.listed_as_planned(listed) for planned, listed in zip(launcher, workers, strict=True))
    assert all(_seconds(m) in planned.times() for m, planned in zip(moments, launcher, strict=True))
    two = [m for m, planned in zip(moments, launcher, strict=True) if planned.other_modified is not None]
    assert len(two) == (0 if zone == "Asia/Kolkata" else 9 if zone == "Australia/Lord_Howe" else 18)
    assert len({m.date() for m in two}) <= 1  # one spring change a year


def test_the_manifest_records_every_time_the_file_system_gives_even_the_epoch():
    files = [PlannedFile("a.parquet", 10, 0.0), PlannedFile("b.parquet", 10, None), PlannedFile("c.parquet", 10, 1.5)]
    assert [f["modified"] for f in describe_inputs(files)] == [
        "1970-01-01T00:00:00+00:00",
        None,
        "1970-01-01T00:00:01.500000+00:00",
    ]


@pytest.mark.parametrize(
    "zone, year",
    [("Europe/Dublin", 2026), ("Europe/Moscow", 2012), ("Africa/Casablanca", 2012), ("Europe/Berlin", 2026)],
)
def test_a_launcher_in_any_zone_and_workers_in_utc_agree_on_every_s3_time_of_a_year(local_zone, zone, year):
    """Every 30 minutes of a year (a microsecond fraction too): launcher and workers in UTC both take
    an s3:// object's true UTC time, one time, whatever Beam's seconds were."""
    path = "s3://kb/a.parquet"
    start = datetime(year, 1, 1, tzinfo=UTC)
    moments = [start + timedelta(minutes=30 * i, microseconds=i % 1_000_000) for i in range(2 * 24 * 365)]
    launcher, workers = _launcher_and_workers(local_zone, zone, path, _s3, moments)
    assert [w.times() for w in workers] == [(_seconds(m),) for m in moments]
    assert [p.times() for p in launcher] == [(_seconds(m),) for m in moments]
    assert all(planned.listed_as_planned(listed) for planned, listed in zip(launcher, workers, strict=True))
