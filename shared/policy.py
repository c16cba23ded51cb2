"""A lab's privacy policy: what may leave the lab, and under which guarantee.

The policy lives in ``LAB_DIR/policy.toml``; every key is optional and the defaults are the safe
choice. The lab enforces it on every release it makes; an unknown key or a bad value is refused,
never ignored, so a typo cannot weaken the policy silently:

- types are strict: ``true`` is not a count, ``"1"`` is not a number (an integer is fine where a
  number is expected: ``epsilon = 1``); ``inf`` and ``nan`` are refused everywhere;
- keys are case-sensitive (``[DP]`` or ``Epsilon`` is an unknown key), each section is a table;
- the file must be UTF-8 TOML (a UTF-8 byte-order mark is allowed); a ``policy.toml`` that is a
  directory, a broken link or unreadable is an error, never "no policy";
- a file with no policy in it (0 bytes or only whitespace) is refused: an emptied or truncated file
  must not fall back to the defaults unnoticed. Delete it to use the defaults, or let it say so in a
  comment (a file holding only comments means "every default").

.. code-block:: toml

    [release]
    min_count = 11              # k: no released count below it (primary + secondary suppression)
    composition = "secure-sum"  # "plain" (per-lab, suppressed) | "secure-sum" (only inside SecAgg+) | "none"
    secure_sum_min_labs = 3     # take part in a secure sum only with at least this many labs

    [dp]                        # differential privacy on label statistics
    enabled = true
    mechanism = "laplace"       # "laplace" (pure ε, δ = 0) | "gaussian" (needs δ > 0)
    epsilon = 1.0               # per release
    delta = 0.0                 # per release
    unit = "cell"               # "cell" | "donor" (then donor_key and max_cells_per_donor)
    donor_key = ""
    max_cells_per_donor = 0
    budget_epsilon = 10.0       # total over every release this lab makes
    budget_delta = 1e-5

    [adapters]
    release = true              # the consortium needs them to build the merged atlas
    clip_norm = 0.0             # > 0: clip the adapter to this L2 norm ...
    noise_multiplier = 0.0      # ... and add Gaussian noise of sd noise_multiplier * clip_norm
    delta = 1e-5                # δ at which the adapter's ε is reported

    [prototypes]                # scPoli atlases: prototypes of cell types the atlas lacks
    release = false             # true: contribute them (the lab's query has a labels column)
    min_cells = 20              # k: a type with fewer cells is never released
    clip_norm = 0.0             # > 0: clip each cell's latent to this L2 norm ...
    noise_multiplier = 0.0      # ... and add Gaussian noise of sd noise_multiplier * clip_norm to each sum
    delta = 1e-5                # δ at which the sums' ε is reported
"""

from __future__ import annotations

import difflib
import json
import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedarches.shared.errors import ConfigError, PrivacyError
from fedarches.shared.labels import DEFAULT_MIN_COUNT
from fedarches.shared.paths import kind_of_mode

POLICY_FILE_NAME = "policy.toml"
MAX_POLICY_BYTES = 1_048_576  # a policy is a few hundred bytes; a bigger file is not one
_MAX_INT = 1_000_000_000  # counts beyond it are typos, and would overflow int64 arithmetic downstream


def default_policy_toml() -> str:
    """The documented default policy (the TOML block of this module's docstring), for ``policy init``."""
    block = (__doc__ or "").split(".. code-block:: toml", 1)[1]
    lines = [line[4:] if line.startswith("    ") else line for line in block.strip("\n").splitlines()]
    header = "# fedarches lab privacy policy: every key is optional; a missing key keeps its default.\n"
    return header + "\n".join(lines).strip() + "\n"


class _Section(BaseModel):
    # strict: no bool as int, no "1" as 1.0; finite floats only (TOML has inf and nan)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ReleasePolicy(_Section):
    """Which label statistics leave, and how small a count may be."""

    min_count: int = Field(DEFAULT_MIN_COUNT, ge=1, le=_MAX_INT, description="k: counts below it are never released")
    composition: Literal["plain", "secure-sum", "none"] = Field(
        "secure-sum", description="per-lab composition in the clear, only inside a secure sum, or not at all"
    )
    secure_sum_min_labs: int = Field(3, ge=2, le=_MAX_INT, description="refuse a secure sum with fewer labs")

    def require_secure_sum(self) -> None:
        """Raise :class:`PrivacyError` unless composition may be released in a secure sum."""
        if self.composition != "secure-sum":
            msg = f"the lab's policy releases composition as {self.composition!r}, not in a secure sum"
            raise PrivacyError(msg)


class DPPolicy(_Section):
    """Differential privacy on label statistics (OpenDP mechanisms)."""

    enabled: bool = True
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon: float = Field(1.0, gt=0, description="ε per release")
    delta: float = Field(0.0, ge=0, lt=1, description="δ per release (gaussian only)")
    unit: Literal["cell", "donor"] = "cell"
    donor_key: str = ""
    max_cells_per_donor: int = Field(0, ge=0, le=_MAX_INT, description="contribution bound when the unit is a donor")
    budget_epsilon: float = Field(10.0, gt=0, description="total ε over every release")
    budget_delta: float = Field(1e-5, ge=0, lt=1, description="total δ over every release")

    @model_validator(mode="after")
    def _consistent(self) -> DPPolicy:
        if self.mechanism == "gaussian" and self.delta <= 0:
            msg = "dp.mechanism = 'gaussian' needs dp.delta > 0 (for example 1e-6)"
            raise ValueError(msg)
        if self.mechanism == "laplace" and self.delta != 0:
            msg = "dp.mechanism = 'laplace' is pure ε-DP: set dp.delta = 0 or use mechanism = 'gaussian'"
            raise ValueError(msg)
        if self.unit == "donor" and (not self.donor_key or self.max_cells_per_donor < 1):
            msg = "dp.unit = 'donor' needs dp.donor_key (an obs column) and dp.max_cells_per_donor >= 1"
            raise ValueError(msg)
        if self.enabled and (self.epsilon > self.budget_epsilon or self.delta > self.budget_delta):
            msg = f"one release (ε={self.epsilon}, δ={self.delta}) exceeds the whole budget"
            raise ValueError(msg)
        return self

    def donors(self, obs: Any, *, source: str = "the query") -> np.ndarray | None:
        """Each cell's donor (``obs[donor_key]``) when DP counts donors; None when the unit is a cell or DP is off.

        Raises :class:`ConfigError` when the policy counts donors and ``obs`` lacks the column.
        """
        if not self.enabled or self.unit == "cell":
            return None
        if obs is None or self.donor_key not in obs:
            msg = f"the privacy policy's unit is a donor, but {source} has no obs column {self.donor_key!r}"
            raise ConfigError(msg, hint="set dp.donor_key in LAB_DIR/policy.toml to the obs column naming donors")
        return np.asarray(obs[self.donor_key].to_numpy())

    @property
    def contribution_bound(self) -> int:
        """Cells one privacy unit may contribute: 1 for a cell, ``max_cells_per_donor`` for a donor."""
        return 1 if self.unit == "cell" else self.max_cells_per_donor


class AdapterPolicy(_Section):
    """Whether adapters leave, and optional clipping plus Gaussian noise on them."""

    release: bool = True
    clip_norm: float = Field(0.0, ge=0, description="L2 clipping bound; 0 turns clipping and noise off")
    noise_multiplier: float = Field(0.0, ge=0, description="noise sd as a multiple of clip_norm")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ at which the adapter's ε is reported")

    @model_validator(mode="after")
    def _consistent(self) -> AdapterPolicy:
        _noise_needs_clip("adapters", self.clip_norm, self.noise_multiplier)
        return self


class PrototypePolicy(_Section):
    """Whether prototypes of cell types the atlas lacks leave (scPoli atlases), and how they are protected.

    A type's prototype is the mean latent of the lab's cells of that type: it leaves as a sum of
    clipped latents and a cell count, each noised when asked, and only for types with ``min_cells``
    cells or more.
    """

    release: bool = False
    min_cells: int = Field(20, ge=1, le=_MAX_INT, description="k: a type with fewer cells is never released")
    clip_norm: float = Field(0.0, ge=0, description="L2 bound of each cell's latent; 0 turns clipping and noise off")
    noise_multiplier: float = Field(0.0, ge=0, description="noise sd on each sum as a multiple of clip_norm")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ at which the sums' ε is reported")

    @model_validator(mode="after")
    def _consistent(self) -> PrototypePolicy:
        _noise_needs_clip("prototypes", self.clip_norm, self.noise_multiplier)
        return self


def _noise_needs_clip(section: str, clip_norm: float, noise_multiplier: float) -> None:
    """Gaussian noise is calibrated to the clip: noise without one is refused."""
    if noise_multiplier > 0 and clip_norm <= 0:
        msg = f"{section}.noise_multiplier needs {section}.clip_norm > 0 (noise is calibrated to the clip)"
        raise ValueError(msg)


class PrivacyPolicy(_Section):
    """A lab's whole policy; ``PrivacyPolicy()`` is the safe default."""

    release: ReleasePolicy = ReleasePolicy()
    dp: DPPolicy = DPPolicy()
    adapters: AdapterPolicy = AdapterPolicy()
    prototypes: PrototypePolicy = PrototypePolicy()

    @classmethod
    def from_toml(cls, text: str, *, source: str = "policy") -> PrivacyPolicy:
        """Parse a policy; a syntax error, unknown key or bad value raises :class:`ConfigError`."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            msg = f"{source} is not valid TOML ({err})"
            raise ConfigError(msg, hint="fix the file, or delete it to use the defaults") from err
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "policy") -> PrivacyPolicy:
        """Validate parsed TOML; every problem is named by its key in :class:`ConfigError`'s message."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(_problem(e) for e in err.errors())
            msg = f"{source} is refused: {problems}"
            raise ConfigError(
                msg, hint="correct or remove the keys named; every key is optional, and its default is the safe choice"
            ) from err

    @classmethod
    def load(cls, lab_dir: Path | str) -> PrivacyPolicy:
        """The lab's effective policy: ``LAB_DIR/policy.toml`` over the defaults (defaults if there is no such file).

        Raises :class:`ConfigError` when ``policy.toml`` exists but is not a readable, non-empty UTF-8
        TOML file (a directory, a broken link, binary or UTF-16 bytes, 0 bytes), or is refused by
        :meth:`from_dict`; and when the lab directory holds the policy under a misspelt name
        (``Policy.toml``), which would otherwise be ignored.
        """
        path = Path(lab_dir) / POLICY_FILE_NAME
        if not os.path.lexists(path):
            _refuse_misnamed(Path(lab_dir))
            return cls()
        return cls.from_toml(_read_policy_text(path), source=str(path))

    def to_toml_dict(self) -> dict[str, Any]:
        """The policy as a dict of TOML tables, every key included."""
        return self.model_dump()

    def overrides(self) -> dict[str, Any]:
        """The keys whose value differs from the default, as ``section.key: value``."""
        default = PrivacyPolicy().model_dump()
        return {
            f"{section}.{key}": value
            for section, values in self.model_dump().items()
            for key, value in values.items()
            if default[section][key] != value
        }

    def summary(self) -> dict[str, str]:
        """One line per guarantee, in words, for logs, the demo and ``policy show``."""
        r, d, a = self.release, self.dp, self.adapters
        composition = {
            "plain": f"per-lab counts, every count < k={r.min_count} suppressed (primary and secondary)",
            "secure-sum": f"only inside a SecAgg+ sum over at least {r.secure_sum_min_labs} labs",
            "none": "never released",
        }[r.composition]
        if d.enabled:
            unit = (
                "one cell" if d.unit == "cell" else f"one donor ({d.donor_key}, at most {d.max_cells_per_donor} cells)"
            )
            dp = (
                f"{d.mechanism} noise, ε={d.epsilon:g} δ={d.delta:g} per release, unit {unit}; "
                f"budget ε={d.budget_epsilon:g} δ={d.budget_delta:g}"
            )
        else:
            dp = "off"
        if not a.release:
            adapters = "never released"
        elif a.clip_norm > 0:
            adapters = f"clipped to L2 norm {a.clip_norm:g}, Gaussian noise sd {a.noise_multiplier * a.clip_norm:g}"
        else:
            adapters = "released as trained (no noise)"
        p = self.prototypes
        if not p.release:
            prototypes = "never released"
        else:
            noise = (
                f"latents clipped to L2 norm {p.clip_norm:g}, "
                f"sums with Gaussian noise sd {p.noise_multiplier * p.clip_norm:g}"
                if p.clip_norm > 0
                else "no noise"
            )
            prototypes = f"new cell types with at least {p.min_cells} cells; {noise}"
        return {
            "composition": composition,
            "differential privacy": dp,
            "adapters": adapters,
            "new-type prototypes": prototypes,
        }


_HINT_FILE = "make LAB_DIR/policy.toml a UTF-8 TOML file, or remove it to use the defaults"


def _read_policy_text(path: Path) -> str:
    """The policy file's text; :class:`ConfigError` unless it is a readable, non-empty UTF-8 file."""
    try:
        info = path.stat()
    except OSError as err:
        what = "a link to a file that does not exist" if path.is_symlink() else f"unreadable ({err.strerror})"
        msg = f"{path} is {what}"
        raise ConfigError(msg, hint=_HINT_FILE) from err
    if not stat.S_ISREG(info.st_mode):
        msg = f"{path} is {kind_of_mode(info.st_mode)}, not a policy file"
        raise ConfigError(msg, hint=_HINT_FILE)
    if info.st_size > MAX_POLICY_BYTES:
        msg = f"{path} holds {info.st_size} bytes; a policy is a small text file (at most {MAX_POLICY_BYTES})"
        raise ConfigError(msg, hint=_HINT_FILE)
    try:
        data = path.read_bytes()
    except OSError as err:
        msg = f"cannot read {path} ({err.strerror})"
        raise ConfigError(msg, hint="check the file's permissions: the lab's user must be able to read it") from err
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data:
        encoding = "UTF-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "binary, with NUL bytes"
        msg = f"{path} is not UTF-8 text (it looks {encoding}); the policy must be a UTF-8 TOML file"
        raise ConfigError(msg, hint="save it again as UTF-8 (most editors: 'Save with encoding')")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        byte = f"byte {err.start} is {data[err.start]:#04x}"
        msg = f"{path} is not UTF-8 text ({byte}); the policy must be a UTF-8 TOML file"
        raise ConfigError(msg, hint="save it again as UTF-8 (most editors: 'Save with encoding')") from err
    if not text.strip():
        msg = f"{path} is empty: an emptied or truncated policy must not fall back to the defaults unnoticed"
        raise ConfigError(
            msg,
            hint="write the policy again, or delete the file to use the defaults "
            "(a file holding only comments also means every default)",
        )
    return text


def _refuse_misnamed(lab_dir: Path) -> None:
    """Refuse a policy saved as ``Policy.toml`` or ``POLICY.TOML``: it would be ignored and the defaults used."""
    try:
        names = [p.name for p in lab_dir.iterdir()] if lab_dir.is_dir() else []
    except OSError:
        return
    misnamed = [n for n in names if n != POLICY_FILE_NAME and n.lower() == POLICY_FILE_NAME]
    if misnamed:
        msg = f"{lab_dir / misnamed[0]} is not read: the lab's policy file must be named exactly {POLICY_FILE_NAME}"
        raise ConfigError(msg, hint=f"rename it to {lab_dir / POLICY_FILE_NAME}")


_SECTIONS = {"release", "dp", "adapters"}


def _problem(error: Any) -> str:
    """One pydantic error as ``key: what is wrong (got VALUE)``."""
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind in ("model_type", "model_attributes_type", "dict_type") and loc in _SECTIONS:
        return f"{loc}: must be a table, as in [{loc}] (got {_toml_value(error['input'])})"
    if kind == "extra_forbidden":
        known = _SECTIONS if len(error["loc"]) == 1 else set(_SECTION_KEYS.get(str(error["loc"][0]), ()))
        key = str(error["loc"][-1])
        close = difflib.get_close_matches(key.lower(), sorted(known), n=1, cutoff=0.6)
        if not close:
            return f"{loc}: {error['msg']}"
        case = "; keys are case-sensitive" if close[0] == key.lower() else ""
        return f"{loc}: {error['msg']} (did you mean {close[0]!r}?{case})"
    if kind in ("int_type", "float_type", "bool_type", "string_type", "finite_number", "literal_error"):
        return f"{loc}: {error['msg']} (got {_toml_value(error['input'])})"
    return f"{loc}: {error['msg']}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value)
    elif isinstance(value, float) and not np.isfinite(value):
        text = str(value)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SECTION_KEYS = {
    name: tuple(model.model_fields)
    for name, model in (("release", ReleasePolicy), ("dp", DPPolicy), ("adapters", AdapterPolicy))
}
