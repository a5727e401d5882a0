"""The one way settings are loaded: a TOML file's table, then environment variables, then flags.

Every settings class (`DetectorConfig`, `TrainConfig`, the service's `ServiceConfig`) is a frozen
pydantic model deriving from `Settings`; constructing one directly reads nothing but its arguments,
so code and tests get exactly what they pass. `load_settings` builds one from the three sources, in
increasing precedence:

1. the class's table of a TOML file (`[detector]`, `[service]`, `[train]`; a class may also take
   top-level keys), unknown keys refused;
2. `<env_prefix><FIELD>` environment variables (`HIDDENSTATE_THRESHOLD=0.9999`), parsed by
   pydantic-settings as it parses any environment (names are case-insensitive; a nested model's
   fields as `<env_prefix><FIELD>__<SUBFIELD>`);
3. flags: keyword arguments, where None means "not given", so an unset flag never masks the file
   or the environment.

Any invalid value becomes a `ConfigError` naming the setting.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from detector.errors import ConfigError

ENV_PREFIX = "HIDDENSTATE_"


class Settings(BaseModel):
    """Base of every settings class: frozen, no unknown fields; where its values come from is `load_settings`'s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: ClassVar[str]
    """The TOML table this class reads (`[detector]`, ...)."""
    top_level: ClassVar[bool] = False
    """Whether the class also reads a file's top-level keys when the file has no table of its name."""
    env_prefix: ClassVar[str] = ENV_PREFIX


S = TypeVar("S", bound=Settings)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file, or a ConfigError saying why it cannot be read."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def file_values(cls: type[Settings], path: str | Path | None, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The class's table of the TOML file at `path` (or of its parsed `data`); {} without a file."""
    if path is None:
        return {}
    data = read_toml(path) if data is None else data
    if cls.table in data:
        table = data[cls.table]
    elif cls.top_level:
        table = {k: v for k, v in data.items() if not isinstance(v, dict)}
    else:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{cls.table}] must be a table")
    sub_tables = {name for name, field in cls.model_fields.items() if _settings_class(field.annotation)}
    unknown = set(table) - set(cls.model_fields) - sub_tables
    if unknown:
        raise ConfigError(f"config file {path}: unknown [{cls.table}] keys {sorted(unknown)}")
    return {k: v for k, v in table.items() if k not in sub_tables}


def env_values(cls: type[Settings]) -> dict[str, Any]:
    """The class's fields that are set in the environment (`<env_prefix><FIELD>`), as pydantic-settings reads them."""
    try:
        return _environment_model(cls)().model_dump(exclude_none=True)
    except ValidationError as exc:
        raise ConfigError(f"invalid {cls.env_prefix}* environment variable for [{cls.table}]: {exc}") from None


def load_settings(cls: type[S], path: str | Path | None = None, **flags: Any) -> S:
    """A `cls` from the TOML file's table, then the environment, then `flags` (None = not given)."""
    values = file_values(cls, path)
    values.update(env_values(cls))
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigError(f"invalid {cls.table} configuration: {exc}") from None


def _settings_class(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Settings)


@functools.cache
def _environment_model(cls: type[Settings]) -> type[BaseSettings]:
    """A pydantic-settings class with `cls`'s fields, all optional, read from the environment only.

    Fields marked `NoDecode` (lists given as "a,b") are read as their raw text, for `cls`'s own validators.
    """
    fields: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if any(m is NoDecode for m in field.metadata):
            fields[name] = (Annotated[str | None, NoDecode], None)
        elif _settings_class(field.annotation):
            fields[name] = (dict[str, Any] | None, None)  # `<prefix><FIELD>__<SUB>`; validated by `cls`
        else:
            fields[name] = (field.annotation | None, None)
    base = type(f"{cls.__name__}Environment", (BaseSettings,), {
        "model_config": SettingsConfigDict(env_prefix=cls.env_prefix, env_nested_delimiter="__", extra="ignore"),
        "__module__": __name__,
    })
    return create_model(f"{cls.__name__}Environment", __base__=base, **fields)
