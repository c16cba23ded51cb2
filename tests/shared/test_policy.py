"""The lab's privacy policy: safe defaults, typos refused, the documented defaults are the real ones."""

from __future__ import annotations

import os
import re
from pathlib import Path

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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[release]\nmin_count = true\n", "release.min_count: Input should be a valid integer (got true)"),
        ("[release]\nmin_count = 11.0\n", "release.min_count: Input should be a valid integer (got 11.0)"),
        ("[release]\nsecure_sum_min_labs = false\n", "release.secure_sum_min_labs"),
        (f"[release]\nmin_count = {10**30}\n", "release.min_count: Input should be less than or equal to"),
        ('[dp]\nepsilon = "1"\n', 'dp.epsilon: Input should be a valid number (got "1")'),
        ("[dp]\nenabled = 0\n", "dp.enabled: Input should be a valid boolean (got 0)"),
        ('[adapters]\nrelease = "false"\n', "adapters.release: Input should be a valid boolean"),
        ("[dp]\ndonor_key = 3\n", "dp.donor_key: Input should be a valid string"),
        ("[dp]\nepsilon = inf\n", "dp.epsilon: Input should be a finite number (got inf)"),
        ("[dp]\nepsilon = nan\n", "dp.epsilon: Input should be a finite number (got nan)"),
        ("[dp]\nbudget_epsilon = inf\n", "dp.budget_epsilon: Input should be a finite number"),
        ("[dp]\nbudget_epsilon = 1e400\n", "dp.budget_epsilon: Input should be a finite number"),
        ("[dp]\nbudget_delta = nan\n", "dp.budget_delta: Input should be a finite number"),
        (
            "[adapters]\nclip_norm = inf\nnoise_multiplier = 1.0\n",
            "adapters.clip_norm: Input should be a finite number",
        ),
        ("[adapters]\nclip_norm = 1.0\nnoise_multiplier = nan\n", "adapters.noise_multiplier"),
        ("[dp]\nepsilon = -1\n", "dp.epsilon: Input should be greater than 0"),
        ("[dp]\nbudget_epsilon = 0\n", "dp.budget_epsilon: Input should be greater than 0"),
        ("[DP]\nepsilon = 0.5\n", "DP: Extra inputs are not permitted (did you mean 'dp'?; keys are case-sensitive)"),
        ("[dp]\nEpsilon = 0.5\n", "dp.Epsilon: Extra inputs are not permitted (did you mean 'epsilon'?"),
        ("epsilon = 0.5\n", "epsilon: Extra inputs are not permitted"),
        ("dp = 1\n", "dp: must be a table, as in [dp] (got 1)"),
        ('release = "plain"\n', 'release: must be a table, as in [release] (got "plain")'),
        ("[[adapters]]\nrelease = false\n", "adapters: must be a table, as in [adapters] (got an array)"),
    ],
)
def test_types_are_strict_and_numbers_finite(text: str, message: str) -> None:
    """A bool is not a count, a string not a number, inf/nan never a budget; wrong case is an unknown key."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        PrivacyPolicy.from_toml(text)


def test_an_integer_is_a_number() -> None:
    policy = PrivacyPolicy.from_toml("[dp]\nepsilon = 1\nbudget_epsilon = 5\n[adapters]\nclip_norm = 2\n")
    assert policy.dp.epsilon == 1.0 and isinstance(policy.dp.epsilon, float) and policy.dp.budget_epsilon == 5.0
    assert policy.adapters.clip_norm == 2.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (it looks binary, with NUL bytes)"),
        ("[dp]\nepsilon = 0.5\n".encode("utf-16"), "not UTF-8 text (it looks UTF-16)"),
        ('[dp]\ndonor_key = "Spender"\n# \xe9\xe8 r\xe9sum\xe9\n'.encode("latin-1"), "not UTF-8 text (byte"),
        (b"", "is empty"),
        (b"  \n\t\n", "is empty"),
        (b"x" * 2_000_000, "a policy is a small text file"),
    ],
)
def test_a_policy_file_that_is_not_utf8_toml_is_a_clear_error(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "policy.toml").write_bytes(data)
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        PrivacyPolicy.load(tmp_path)
    assert str(tmp_path / "policy.toml") in str(err.value)


def test_a_utf8_byte_order_mark_and_a_comments_only_file_are_fine(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_bytes("\ufeff[dp]\nepsilon = 0.5\n".encode())
    assert PrivacyPolicy.load(tmp_path).dp.epsilon == 0.5
    (tmp_path / "policy.toml").write_text("# every key at its default\n")
    assert PrivacyPolicy.load(tmp_path) == PrivacyPolicy()


def test_no_policy_file_means_the_defaults(tmp_path: Path) -> None:
    assert PrivacyPolicy.load(tmp_path) == PrivacyPolicy()


def test_a_policy_that_is_a_directory_or_a_broken_link_is_not_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match=r"policy\.toml is a directory, not a policy file"):
        PrivacyPolicy.load(tmp_path)
    path.rmdir()
    path.symlink_to(tmp_path / "gone.toml")
    with pytest.raises(ConfigError, match=r"policy\.toml is a link to a file that does not exist"):
        PrivacyPolicy.load(tmp_path)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(ConfigError, match=r"policy.toml is a FIFO \(named pipe\)"):
        PrivacyPolicy.load(tmp_path)  # refused without opening it: reading a FIFO would block forever


def test_a_policy_under_a_misspelt_name_is_not_ignored(tmp_path: Path) -> None:
    (tmp_path / "Policy.toml").write_text('[release]\ncomposition = "none"\n')
    with pytest.raises(ConfigError, match=r"must be named exactly policy\.toml"):
        PrivacyPolicy.load(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_policy_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[release]\ncomposition = "none"\n')
    path.chmod(0)
    with pytest.raises(ConfigError, match=r"cannot read .*policy\.toml"):
        PrivacyPolicy.load(tmp_path)
