"""Every tunable of the engine, in one typed place.

`DetectorConfig` holds what changes scores and alerts. It can be set from a TOML
file, from environment variables (`HIDDENSTATE_THRESHOLD=0.9999`) and from
command-line flags, in that order of increasing precedence (`load_config`, the
one settings loader of `detector.settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from detector.settings import Settings, load_settings


View = Literal["forecast", "level", "stuck", "correlation"]
"""A scoring view: the network's forecast error, a channel's shifted level, a stuck value, the channels' levels
together (docs/configuration.md, "Views")."""


class DetectorConfig(Settings):
    """Engine settings: normalisation, calibration, threshold, hysteresis, pool bounds."""

    table: ClassVar[str] = "detector"
    top_level: ClassVar[bool] = True

    model: str = Field("gru-default", description="Shipped model name or path to a model directory.")
    channels: int | None = Field(
        None, ge=1, le=1024, description="Values per reading; None = taken from the first reading or file."
    )

    warmup: int = Field(60, ge=2, description="Readings per sensor before it may be flagged.")
    norm_window: float = Field(
        500.0, gt=1, description="Memory (readings) of the per-channel running mean/variance used to normalise."
    )
    short_window: float = Field(8.0, ge=1, description="Smoothing (readings) of the error before calibration.")
    long_window: float = Field(
        1000.0, gt=1, description="Memory (readings) of each sensor's own error distribution."
    )
    threshold: float = Field(
        0.999, gt=0.5, lt=1.0, description="Calibrated score at or above which a reading is anomalous."
    )
    raise_k: int = Field(4, ge=1, description="Anomalous readings among the last raise_n that raise an alert.")
    raise_n: int = Field(5, ge=1, le=32, description="Window (readings) for raise_k.")
    clear_m: int = Field(3, ge=1, le=60000, description="Consecutive quiet readings that clear an alert.")
    clear_threshold: float = Field(
        0.98, gt=0.5, lt=1.0, description="Score below which a reading counts as quiet towards clearing an open alert"
        " (`threshold` where that is lower): readings between the two neither raise nor clear an alert."
    )
    clear_level: float = Field(
        0.995, gt=0.5, le=1.0, description="An open alert counts a reading as quiet only if every channel's own level"
        " score (2Φ(|level|/σ) − 1, not corrected for the number of channels) is below this too: the alert stays open"
        " while any one channel is still that far from the reference held since it opened. 1 = off."
    )
    level_window: float = Field(
        40.0, ge=2, description="Memory (readings) of each channel's recent level, compared with its usual one."
    )
    level_fast_window: float = Field(
        0.0, ge=0, description="If set (at least 2), the level view also keeps each channel's level over this many"
        " readings, so an abrupt shift scores sooner; both scales count as tests in the correction for the number of"
        " channels (C floats more state per scale). 0 = off (the default)."
    )
    views: Annotated[tuple[View, ...], NoDecode] = Field(
        ("forecast", "level", "stuck"), description="Which scoring views run (comma-separated in the"
        " environment and flags): forecast, level, stuck, correlation. The score is the most surprising of them; a"
        " view left out scores nothing and names no alert. correlation runs on sensors with 2 to"
        " `correlation_max_channels` channels."
    )
    correlation_window: float = Field(
        60.0, ge=2, description="Memory (readings) of the level vector that the correlation view compares with the"
        " usual covariance of the sensor's channels."
    )
    correlation_max_channels: int = Field(
        32, ge=0, le=1024, description="With `correlation` in `views`, sensors with at most this many channels (and"
        " at least 2) get the correlation view (C² state floats and a C×C solve per reading)."
    )
    season_bins: int = Field(
        0, ge=0, le=288, description="Bins of each channel's time-of-day profile (UTC), e.g. 24: once a sensor has two"
        " days of readings and the profile explains half a channel's variance, its level is judged against what it"
        " usually reads at that time of day (`bins` + 3 floats per channel). 0 = off (the default)."
    )
    stuck_after: int = Field(
        10, ge=2, le=60000, description="Shortest run of identical readings on a channel that can score as stuck."
    )

    learning: Literal["off", "online"] = Field(
        "off", description="online: the shared weights keep learning from the stream (truncated BPTT on a tracked"
        " sample of sensors, leaving out anomalous readings and open alerts; docs/models.md). Forecasters only; in"
        " serve one instance learns and the consumer group shares its versions (the weights topic)."
    )
    learning_sensors: int = Field(64, ge=1, le=4096, description="Sensors whose recent readings online learning"
                                  " learns from (the first seen; a slot freed by eviction goes to the next new one).")
    learning_every: int = Field(64, ge=1, description="Readings per tracked sensor, on average, between two updates of"
                                " online learning.")
    learning_rate: float = Field(3e-4, gt=0, lt=1, description="Adam step size of online learning.")
    fit_first: int = Field(0, ge=0, description="Fit the loaded model once on the first N accepted readings of the"
                           " stream (scored with the loaded weights meanwhile), then score on with the fit (0: off;"
                           " docs/models.md). Forecasters, encdec and bidir alike.")

    max_gap: float = Field(
        3600.0, gt=0, description="Seconds between readings after which a sensor's hidden state is reset."
    )
    idle_ttl: float | None = Field(
        7 * 86400.0, gt=0, description="Event-time seconds after which an idle sensor is evicted; None = never."
    )
    capacity: int = Field(1_000_000, ge=1, description="Most sensors held at once; the least recently seen go first.")
    state_dtype: Literal["float32", "float16"] = Field(
        "float32", description="How each sensor's network state is stored between readings: float16 halves its"
        " bytes (128 B less per sensor at 64 hidden units) for scores that differ by about 1e-3 (docs/performance.md)."
        " Changing it discards checkpointed state."
    )
    initial_capacity: int = Field(1024, ge=1, description="Slots allocated up front; grows by doubling.")
    max_future_seconds: float | None = Field(
        86_400.0, gt=0, description="Readings stamped further ahead of this machine's clock are bad_timestamp, through"
        " the Python API, replay and Kafka alike: the event-time clock, which ages out idle sensors, must not jump."
        " None = no limit."
    )

    @field_validator("views", mode="before")
    @classmethod
    def _split_views(cls, value: Any) -> Any:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        return tuple(dict.fromkeys(items)) if isinstance(items, list | tuple) else items

    @model_validator(mode="after")
    def _check(self) -> DetectorConfig:
        if 0 < self.level_fast_window < 2:
            raise ValueError(f"level_fast_window ({self.level_fast_window}) must be 0 (off) or at least 2")
        if not self.views:
            raise ValueError("views is empty: name at least one of forecast, level, stuck, correlation")
        if self.raise_k > self.raise_n:
            raise ValueError(f"raise_k ({self.raise_k}) cannot exceed raise_n ({self.raise_n})")
        return self


def load_config(path: str | Path | None = None, **overrides: Any) -> DetectorConfig:
    """A DetectorConfig from a TOML file, then HIDDENSTATE_* variables, then `overrides` (flags; None = unset).

    The TOML file may hold the keys at top level or under a `[detector]` table (`detector.settings`).
    """
    return load_settings(DetectorConfig, path, **overrides)
