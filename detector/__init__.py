"""hiddenstate's engine: per-sensor recurrent state, calibrated scores and alerts."""

from detector.alerts import AlertEvent, AlertKind
from detector.config import DetectorConfig, load_config
from detector.api import Detector, Score
from detector.engine import Engine, StepResult
from detector.errors import ConfigError, HiddenstateError, InputFileError, ModelError
from detector.model.store import Model, load_model, save_model
from detector.readings.reasons import RejectReason
from detector.version import __version__

__all__ = [
    "__version__",
    "AlertEvent",
    "AlertKind",
    "ConfigError",
    "Detector",
    "DetectorConfig",
    "Engine",
    "HiddenstateError",
    "InputFileError",
    "Model",
    "ModelError",
    "RejectReason",
    "Score",
    "StepResult",
    "load_config",
    "load_model",
    "save_model",
]
