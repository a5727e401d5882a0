"""Why a reading is not scored: every reason, defined once, for the engine, files, the Python API and Kafka.

A rejected reading leaves its sensor's state untouched and is reported with one `RejectReason`:
in status arrays as its code (0 is reserved for "scored"), in dead-letter headers, metrics labels
and files as its `label`, with a default `detail` for people. The first seven can be found in a
reading itself (by the engine too); the others only while reading a Kafka message, before there is
a reading to score, and one (`OUTPUT_TOO_LARGE`) only while producing: the reading was scored, but its
score record or alert event is larger than its topic accepts.
"""

from __future__ import annotations

from enum import IntEnum

SCORED = 0
"""Status code of a reading that was scored."""


class RejectReason(IntEnum):
    """Why a reading (or a whole message) was not scored."""

    NOT_NUMERIC = 1
    NOT_FINITE = 2
    WRONG_CHANNELS = 3
    BAD_TIMESTAMP = 4
    OUT_OF_ORDER = 5
    DUPLICATE = 6
    BAD_SENSOR_ID = 7
    # found only while reading a message
    MALFORMED_JSON = 8
    NOT_AN_OBJECT = 9
    MISSING_FIELD = 10
    TOO_LARGE = 11
    TOO_MANY_READINGS = 12
    # found only while producing an output
    OUTPUT_TOO_LARGE = 13

    @property
    def label(self) -> str:
        """Lower-case name used in dead-letter headers, metrics labels and files."""
        return self.name.lower()

    @property
    def detail(self) -> str:
        """What it means, for a dead letter or a log line that has nothing more specific to say."""
        return _DETAILS[self]

    @property
    def of_reading(self) -> bool:
        """Whether a reading itself can have this reason (the engine checks these), not only a message."""
        return self <= RejectReason.BAD_SENSOR_ID


READING_REASONS = tuple(r for r in RejectReason if r.of_reading)
"""The reasons the engine can give (its counters and the `readings_rejected` metric have one each)."""

_DETAILS = {
    RejectReason.NOT_NUMERIC: "a value is not a number",
    RejectReason.NOT_FINITE: "a value or the timestamp is not finite",
    RejectReason.WRONG_CHANNELS: "number of values differs from the model's channels",
    RejectReason.BAD_TIMESTAMP: "timestamp is not finite",
    RejectReason.OUT_OF_ORDER: "ts is before the sensor's previous reading",
    RejectReason.DUPLICATE: "ts equals the sensor's previous reading",
    RejectReason.BAD_SENSOR_ID: "sensor id is empty or too long",
    RejectReason.MALFORMED_JSON: "the message is not JSON",
    RejectReason.NOT_AN_OBJECT: "the message is not a JSON object or array of readings",
    RejectReason.MISSING_FIELD: "a field a reading needs is missing",
    RejectReason.TOO_LARGE: "the message or its key is larger than the service accepts",
    RejectReason.TOO_MANY_READINGS: "the message holds more readings than the service accepts",
    RejectReason.OUTPUT_TOO_LARGE: "the reading's score record or alert event is larger than its topic accepts",
}
