"""Detector options from the environment and by name."""

from __future__ import annotations

import pytest

from dataflows.sensors import Config
from operators.config import ConfigError, Env
from operators.detectors import make_detector
from operators.detectors.context import ContextSurprise
from operators.detectors.tail import TailSurprise
from operators.steps import DetectConfig, new_detect_state

pytestmark = pytest.mark.timeout(30)


def test_flow_reads_detector_options_as_json() -> None:
    cfg = Config.from_env(
        Env({"VIGIL_DETECTOR": "context", "VIGIL_DETECTOR_OPTIONS": '{"flagged": "clip"}'})
    )
    assert cfg.detect.options == (("flagged", "clip"),)
    state = new_detect_state(cfg.detect)
    assert isinstance(state.value, ContextSurprise)
    assert state.value.flagged == "clip"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("[1]", "expected a JSON object, got list"),
        ("{bad", "expected a JSON object, got invalid JSON"),
        ('{"flagged": "ignore"}', "expected flagged in"),
        ('{"nope": 1}', "do not fit detector 'context'"),
    ],
)
def test_bad_detector_options_name_the_variable(options: str, expected: str) -> None:
    env = Env({"VIGIL_DETECTOR": "context", "VIGIL_DETECTOR_OPTIONS": options})
    with pytest.raises(ConfigError, match="VIGIL_DETECTOR_OPTIONS") as err:
        Config.from_env(env)
    assert expected in str(err.value)


def test_make_detector_passes_options() -> None:
    tail = make_detector("tail", {"window": 50})
    assert isinstance(tail, TailSurprise)
    assert tail.window == 50
    assert DetectConfig("tail", options=(("window", 50),)).options == (("window", 50),)


def test_an_unknown_variable_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        Config.from_env(Env({"VIGIL_DETECTR": "tail"}))
    assert "ignoring VIGIL_DETECTR: not a setting of the sensors flow" in caplog.text
