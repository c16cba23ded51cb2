"""The lab's privacy policy: safe defaults, typos refused, the documented defaults are the real ones."""

from __future__ import annotations

import pytest

from fedarches.shared.errors import ConfigError
from fedarches.shared.policy import PrivacyPolicy, default_policy_toml


def test_defaults_are_the_safe_choice() -> None:
    policy = PrivacyPolicy()
    assert policy.release.min_count == 11
    assert policy.release.composition == "secure-sum"
    assert policy.dp.enabled and policy.dp.unit == "cell" and policy.dp.epsilon <= policy.dp.budget_epsilon
    assert policy.adapters.release
    assert policy.overrides() == {}


def test_documented_defaults_parse_to_the_defaults() -> None:
    assert PrivacyPolicy.from_toml(default_policy_toml()) == PrivacyPolicy()


def test_overrides_are_reported() -> None:
    policy = PrivacyPolicy.from_toml('[release]\ncomposition = "plain"\n[dp]\nepsilon = 0.5\n')
    assert policy.overrides() == {"release.composition": "plain", "dp.epsilon": 0.5}
    assert "per-lab counts" in policy.summary()["composition"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dp]\nepsilom = 1.0\n", "dp.epsilom: Extra inputs are not permitted"),
        ("[release]\nmin_count = 0\n", "release.min_count"),
        ('[release]\ncomposition = "public"\n', "release.composition"),
        ('[dp]\nmechanism = "gaussian"\n', "needs dp.delta > 0"),
        ("[dp]\ndelta = 1e-6\n", "pure ε-DP"),
        ('[dp]\nunit = "donor"\n', "donor_key"),
        ("[dp]\nepsilon = 20.0\n", "exceeds the whole budget"),
        ("[adapters]\nnoise_multiplier = 1.0\n", "clip_norm > 0"),
        ("[dp\n", "not valid TOML"),
    ],
)
def test_bad_policies_are_refused_with_the_key_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PrivacyPolicy.from_toml(text)
