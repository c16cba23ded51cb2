"""trVAE and expiMap models saved by the scArches package (``model.save()``), read without running pickled code.

The files are read by :mod:`fedarches.shared.models._scarches_files`. Both models share scArches'
conditional encoder (``encoder.FC.L0`` with its condition columns, further ``encoder.FC.L<i>``
layers, mean and log-variance heads); trVAE decodes with a conditional first layer, hidden layers and
a softmax head, expiMap with one masked linear layer. Only what fedarches' :class:`TRVAE` and
:class:`EXPIMAP` hold is accepted: negative-binomial loss, layer norm without batch norm, no library
encoder, for expiMap a hard mask and no new programs. Neither saves cell types: a reference's labels
come from its data (the bundle's kNN labels need them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedarches.shared.errors import UserInputError
from fedarches.shared.models._scarches_files import (
    HINT,
    read_scarches_save,
    registered_anndata,
    rename_by_patterns,
)

if TYPE_CHECKING:
    import re
    from pathlib import Path

    from anndata import AnnData


def _hidden_layer(prefix: str) -> Any:
    """Rename scArches' hidden layer ``L<i>`` (i >= 1) to fedarches' ``<prefix>.<i - 1>.0`` (a Linear in a block)."""

    def name(match: re.Match[str]) -> str:
        return f"{prefix}.{int(match.group(1)) - 1}.0.{match.group(2)}"

    return name


ENCODER_PATTERNS: list[tuple[str, Any]] = [
    (r"encoder\.FC\.L0\.(expr_L|cond_L)\.(weight|bias)", r"encoder_first.\1.\2"),
    (r"encoder\.FC\.L([1-9]\d*)\.(weight|bias)", _hidden_layer("encoder_hidden")),
    (r"encoder\.(mean_encoder|log_var_encoder)\.(weight|bias)", r"\1.\2"),
    (r"theta", "theta"),
]
TRVAE_PATTERNS = [
    *ENCODER_PATTERNS,
    (r"decoder\.FirstL\.L0\.(expr_L|cond_L)\.weight", r"decoder_first.\1.weight"),
    (r"decoder\.HiddenL\.L([1-9]\d*)\.(weight)", _hidden_layer("decoder_hidden")),
    (r"decoder\.mean_decoder\.0\.(weight|bias)", r"mean_decoder.\1"),
]
EXPIMAP_PATTERNS = [
    *ENCODER_PATTERNS,
    (r"decoder\.L0\.expr_L\.weight", "decoder_programs"),
    (r"decoder\.L0\.expr_L\.mask", "mask"),
    (r"decoder\.L0\.cond_L\.weight", "decoder_cond.weight"),
]


@dataclass(frozen=True)
class ScArchesCVAE:
    """An scArches trVAE or expiMap save, checked and renamed to fedarches' module."""

    family: str  # "trVAE" or "expiMap"
    state: dict[str, Any]
    genes: list[str]
    condition_key: str
    conditions: list[str]
    hidden: tuple[int, ...]
    n_latent: int
    dropout_rate: float
    options: dict[str, Any]  # trVAE: mmd_on, beta


def read_scarches_cvae(directory: Path | str) -> ScArchesCVAE:
    """Read and check an scArches trVAE or expiMap save; :class:`UserInputError` names what fedarches cannot hold."""
    from fedarches.shared.models._scarches_files import family_of

    save = read_scarches_save(directory)
    family = family_of(save)
    if family not in ("trVAE", "expiMap"):
        msg = f"{save.directory} holds an scArches {family} model, not trVAE or expiMap"
        raise UserInputError(msg, hint=HINT)

    def value(key: str) -> Any:
        return save.value(key, family)

    _require(value("recon_loss_") == "nb", family, "uses reconstruction loss", value("recon_loss_"), "'nb'")
    _require(not value("use_bn_") and value("use_ln_"), family, "uses batch norm / layer norm", "", "layer norm only")
    _require(not save.attributes.get("use_l_encoder_", False), family, "has a library encoder", True, "none")
    options: dict[str, Any] = {}
    if family == "trVAE":
        options = {"mmd_on": str(value("mmd_on_")), "beta": float(value("beta_") if value("use_mmd_") else 0.0)}
        state = rename_by_patterns(save.state, TRVAE_PATTERNS, save.directory, family)
        n_latent = int(value("latent_dim_"))
    else:
        for key in ("n_ext_", "n_ext_m_"):
            _require(
                not save.attributes.get(key, 0), family, f"has new programs ({key})", save.attributes.get(key), "0"
            )
        _require(not save.attributes.get("soft_mask_", False), family, "uses a soft mask", True, "a hard mask")
        state = rename_by_patterns(save.state, EXPIMAP_PATTERNS, save.directory, family)
        n_latent = len(value("mask_"))
    conditions = [str(c) for c in value("conditions_")]
    if tuple(state["theta"].shape) != (len(save.genes), len(conditions)):
        msg = f"theta has shape {tuple(state['theta'].shape)} for {len(save.genes)} genes, {len(conditions)} conditions"
        raise UserInputError(msg, hint=HINT)
    return ScArchesCVAE(
        family=family,
        state=state,
        genes=save.genes,
        condition_key=str(value("condition_key_")),
        conditions=conditions,
        hidden=tuple(int(h) for h in value("hidden_layer_sizes_")),
        n_latent=n_latent,
        dropout_rate=float(value("dr_rate_")),
        options=options,
    )


def to_model(
    saved: ScArchesCVAE, labels_key: str, adata: AnnData | None = None, terms: list[str] | None = None
) -> tuple[Any, AnnData]:
    """Build fedarches' :class:`TRVAE` or :class:`EXPIMAP` holding ``saved``'s weights, and its AnnData.

    ``adata``: the reference cells (the condition column as scArches named it, and ``labels_key``),
    for a bundle's embedding, kNN labels and reference summary. ``terms``: expiMap's program names
    (scArches keeps them in ``adata.uns['terms']``, not in the save); default ``program_<i>``.
    """
    adata = registered_anndata(saved.genes, saved.condition_key, saved.conditions, labels_key, None, adata)
    if saved.family == "trVAE":
        from fedarches.shared.models.trvae import TRVAE

        TRVAE.setup_anndata(adata, batch_key=saved.condition_key, labels_key=labels_key)
        model = TRVAE(adata, n_hidden=saved.hidden, n_latent=saved.n_latent, dropout_rate=saved.dropout_rate,
                      **saved.options)  # fmt: skip
    else:
        from fedarches.shared.models.expimap import EXPIMAP

        names = list(terms) if terms is not None else [f"program_{i}" for i in range(saved.n_latent)]
        if len(names) != saved.n_latent:
            msg = f"{len(names)} program names for a model of {saved.n_latent} programs"
            raise UserInputError(msg, hint="give the reference data's uns['terms'] of the scArches model")
        EXPIMAP.setup_anndata(adata, batch_key=saved.condition_key, labels_key=labels_key)
        model = EXPIMAP(adata, n_hidden=saved.hidden, dropout_rate=saved.dropout_rate, terms=names)
    state = model.module.state_dict()
    unexpected = sorted(set(saved.state) - set(state))
    missing = sorted(set(state) - set(saved.state))
    if unexpected or missing:
        msg = f"the scArches {saved.family} model's layers differ (extra {unexpected[:3]}, missing {missing[:3]})"
        raise UserInputError(msg, hint=HINT)
    for name, tensor in saved.state.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            msg = f"tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(state[name].shape)}"
            raise UserInputError(msg, hint=HINT)
        state[name] = tensor.to(state[name].dtype)
    model.module.load_state_dict(state)
    model.module.eval()
    model.is_trained_ = True
    return model, adata


def _require(ok: bool, family: str, what: str, found: Any, needed: str) -> None:
    if not ok:
        msg = f"the scArches {family} model {what} {found!r}; fedarches' {family} needs {needed}"
        raise UserInputError(msg, hint=f"retrain with scArches' {family} defaults (layer norm, recon_loss='nb')")


__all__ = ["ScArchesCVAE", "read_scarches_cvae", "to_model"]
