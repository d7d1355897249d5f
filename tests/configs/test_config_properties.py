"""Property: any number given to any numeric setting either validates or fails with one line naming that
setting (a ConfigError, printed by the command lines without a traceback); inf and nan are refused everywhere."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from basel_app.config.schema import ConfigError, DistillConfig, EvalConfig, ImportanceConfig, MethodConfig, TaskConfig
from basel_app.config.schema import TrainerConfig

SECTIONS = {"task": TaskConfig, "method": MethodConfig, "method.importance": ImportanceConfig,
            "method.distill": DistillConfig, "trainer": TrainerConfig, "eval": EvalConfig}


def numeric_settings(kind: str) -> list[str]:
    """Every `section.field` whose type is `kind` (int or float, optional or not)."""
    return sorted(f"{section}.{f.name}" for section, config in SECTIONS.items() for f in dataclasses.fields(config)
                  if re.fullmatch(rf"{kind}( \| None)?", str(f.type)))


INTS, FLOATS = numeric_settings("int"), numeric_settings("float")
NUMBERS = st.one_of(
    st.tuples(st.sampled_from(INTS), st.integers(-(10**12), 10**12)),
    st.tuples(st.sampled_from(FLOATS), st.floats(allow_nan=True, allow_infinity=True)),
)


def test_the_settings_are_found():
    assert {"method.lr", "eval.code_timeout_s", "trainer.gradient_clip_val", "method.keep_ratio"} <= set(FLOATS)
    assert {"method.pruning_times", "task.max_length", "trainer.checkpoint_every_n_steps"} <= set(INTS)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setting=NUMBERS)
def test_any_number_validates_or_fails_in_one_line_naming_its_setting(compose_config, setting):
    key, value = setting
    try:
        cfg = OmegaConf.to_object(compose_config(f"{key}={value}"))
    except ConfigError as err:
        assert "\n" not in str(err) and f"{key}=" in str(err)
        return
    assert not isinstance(value, float) or math.isfinite(value)
    assert OmegaConf.select(OmegaConf.structured(cfg), key) == value


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_no_rate_timeout_or_ratio_may_be_infinite_or_nan(compose_config, key, value):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=(-?inf|nan) is not allowed; it must be a finite number$"):
        OmegaConf.to_object(compose_config(f"{key}={value}"))
