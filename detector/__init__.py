"""hiddenstate's engine: per-sensor recurrent state, calibrated scores and alerts."""

from detector.alerts import AlertEvent, AlertKind
from detector.config import DetectorConfig, load_config
from detector.detector import Detector, Score
from detector.engine import Engine, StepResult
from detector.errors import ConfigError, HiddenstateError, InputFileError, ModelError
from detector.model_store import Model, load_model, save_model
from detector.validation import RejectReason

__version__ = "0.1.0"

__all__ = [
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
