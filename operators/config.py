"""Configuration from environment variables with one prefix, validated with clear errors.

Every flow reads its settings through :class:`Env`. A value of the wrong type
is an error whose message names the variable, what was expected and what
arrived; a set variable that the flow does not know (a typo, or another flow's
setting) is reported by :meth:`Env.unknown` so the flow can warn about it.

Example:
    >>> env = Env({"VIGIL_COUNT": "12", "VIGIL_RATE": "x"})
    >>> env.integer("COUNT", 5)
    12
    >>> env.number("RATE", 0.0)
    Traceback (most recent call last):
    ...
    operators.config.ConfigError: VIGIL_RATE: expected a number, got 'x'

"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson

PREFIX = "VIGIL_"
T = TypeVar("T", bound=str)


class ConfigError(ValueError):
    """A configuration variable is missing, unknown or malformed."""


class Env:
    """Typed access to ``VIGIL_*`` variables; records which names were read.

    Args:
        environ: The environment (``os.environ`` when omitted).

    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if environ is None else environ)
        self._read: set[str] = set()

    def raw(self, name: str) -> str | None:
        """The raw value of ``VIGIL_<name>``, or ``None`` when unset or empty."""
        self._read.add(PREFIX + name)
        value = self._env.get(PREFIX + name)
        return value if value not in (None, "") else None

    def text(self, name: str, default: str) -> str:
        """A string setting."""
        value = self.raw(name)
        return default if value is None else value

    def choice(self, name: str, default: T, choices: Iterable[T]) -> T:
        """One of a fixed set of strings."""
        allowed = list(choices)
        value = self.raw(name)
        if value is None:
            return default
        for c in allowed:
            if value == c:
                return c
        msg = f"{PREFIX}{name}: expected one of {allowed}, got {value!r}"
        raise ConfigError(msg)

    def integer(self, name: str, default: int, *, min_value: int | None = None) -> int:
        """An integer setting, optionally bounded below."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            out = int(value)
        except ValueError:
            msg = f"{PREFIX}{name}: expected an integer, got {value!r}"
            raise ConfigError(msg) from None
        if min_value is not None and out < min_value:
            msg = f"{PREFIX}{name}: expected an integer >= {min_value}, got {out}"
            raise ConfigError(msg)
        return out

    def number(self, name: str, default: float) -> float:
        """A finite number setting."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            out = float(value)
        except ValueError:
            msg = f"{PREFIX}{name}: expected a number, got {value!r}"
            raise ConfigError(msg) from None
        if out != out or out in (float("inf"), float("-inf")):
            msg = f"{PREFIX}{name}: expected a finite number, got {value!r}"
            raise ConfigError(msg)
        return out

    def flag(self, name: str, default: bool) -> bool:
        """A boolean: true/false, 1/0, yes/no, on/off."""
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        msg = f"{PREFIX}{name}: expected true or false, got {value!r}"
        raise ConfigError(msg)

    def items(self, name: str, default: Iterable[str]) -> list[str]:
        """A comma-separated list (blank items dropped)."""
        value = self.raw(name)
        if value is None:
            return list(default)
        return [v.strip() for v in value.split(",") if v.strip()]

    def path(self, name: str, default: Path) -> Path:
        """A filesystem path."""
        value = self.raw(name)
        return default if value is None else Path(value)

    def json_object(self, name: str) -> dict[str, str]:
        """A JSON object of string settings (for example extra librdkafka settings)."""
        return {k: str(v) for k, v in self.json_settings(name).items()}

    def json_settings(self, name: str) -> dict[str, Any]:
        """A JSON object of settings with their JSON types (numbers stay numbers).

        Example:
            >>> Env({"VIGIL_DETECTOR_OPTIONS": '{"flag_level": 3.5}'}).json_settings(
            ...     "DETECTOR_OPTIONS"
            ... )
            {'flag_level': 3.5}

        """
        value = self.raw(name)
        if value is None:
            return {}
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            msg = f"{PREFIX}{name}: expected a JSON object, got invalid JSON {value!r:.60}"
            raise ConfigError(msg) from None
        if not isinstance(obj, dict):
            msg = f"{PREFIX}{name}: expected a JSON object, got {type(obj).__name__}"
            raise ConfigError(msg)
        return {str(k): v for k, v in obj.items()}

    def unknown(self) -> list[str]:
        """``VIGIL_*`` variables that no setting read so far (typos, or another flow's).

        Example:
            >>> env = Env({"VIGIL_TRESHOLD": "0.9"})
            >>> env.number("THRESHOLD", 0.999)
            0.999
            >>> env.unknown()
            ['VIGIL_TRESHOLD']

        """
        return sorted(k for k in self._env if k.startswith(PREFIX) and k not in self._read)


def configure_logging(level: str) -> None:
    """Send log lines to stderr at ``level``, unless the application already set up logging.

    Called by the flow modules that ``python -m bytewax.run`` loads, the edge
    where no one else configures logging.
    """
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("operators").setLevel(level)
    logging.getLogger("dataflows").setLevel(level)
