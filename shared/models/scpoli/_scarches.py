"""scPoli models saved by the scArches package (``model.save()``), read without running pickled code.

The files are read by :mod:`fedarches.shared.models._scarches_files` (an allow-list unpickler: reading
cannot run code; the reference cells' metadata scArches pickles is never kept).
:func:`read_scarches_scpoli` checks that the save describes a model fedarches' :class:`SCPOLI` can
hold (one condition key, one hidden layer, negative-binomial loss, conditions in encoder and
decoder, layer norm) and renames its tensors; :func:`to_model` builds the :class:`SCPOLI` model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedarches.shared.errors import UserInputError
from fedarches.shared.models._scarches_files import HINT as _HINT
from fedarches.shared.models._scarches_files import read_scarches_save, registered_anndata, rename

if TYPE_CHECKING:
    from anndata import AnnData

    from fedarches.shared.models.scpoli._model import SCPOLI

# scArches' tensor names -> fedarches' (ScPoliModule)
_RENAMES = {
    "theta": "theta",
    "embeddings.0.weight": "embedding.weight",
    "encoder.FC.L0.expr_L.weight": "encoder.layer.expr_L.weight",
    "encoder.FC.L0.expr_L.bias": "encoder.layer.expr_L.bias",
    "encoder.FC.L0.cond_L.weight": "encoder.layer.cond_L.weight",
    "encoder.mean_encoder.weight": "mean_encoder.weight",
    "encoder.mean_encoder.bias": "mean_encoder.bias",
    "encoder.log_var_encoder.weight": "log_var_encoder.weight",
    "encoder.log_var_encoder.bias": "log_var_encoder.bias",
    "decoder.FirstL.L0.expr_L.weight": "decoder.layer.expr_L.weight",
    "decoder.FirstL.L0.cond_L.weight": "decoder.layer.cond_L.weight",
    "decoder.mean_decoder.0.weight": "mean_decoder.weight",
    "decoder.mean_decoder.0.bias": "mean_decoder.bias",
}


@dataclass(frozen=True)
class ScArchesScPoli:
    """An scArches scPoli save, checked and renamed to fedarches' module."""

    state: dict[str, Any]  # torch tensors under ScPoliModule's names
    genes: list[str]
    condition_key: str
    conditions: list[str]
    cell_type_key: str
    cell_types: list[str]
    prototypes: np.ndarray  # (cell types, latent), in ``cell_types`` order
    prototype_variance: float
    n_latent: int
    n_hidden: int
    embedding_dim: int
    embedding_max_norm: float
    dropout_rate: float


def read_scarches_scpoli(directory: Path | str) -> ScArchesScPoli:
    """Read and check an scArches scPoli save; :class:`UserInputError` names what fedarches cannot hold."""
    import torch

    save = read_scarches_save(directory)
    directory, raw, genes = save.directory, save.state, save.genes

    def value(key: str) -> Any:
        return save.value(key, "scPoli")

    _require(value("recon_loss_") == "nb", "uses reconstruction loss", value("recon_loss_"), "'nb'")
    _require(sorted(value("inject_condition_")) == ["decoder", "encoder"], "injects conditions into",
             value("inject_condition_"), "encoder and decoder")  # fmt: skip
    _require(not value("use_bn_") and value("use_ln_"), "uses batch norm / layer norm", "", "layer norm only")
    _require(len(value("hidden_layer_sizes_")) == 1, "has hidden layers", value("hidden_layer_sizes_"), "one")
    conditions = value("conditions_")
    _require(isinstance(conditions, dict) and len(conditions) == 1, "has condition keys", list(conditions), "one")
    cell_type_keys = value("cell_type_keys_")
    _require(isinstance(cell_type_keys, list) and len(cell_type_keys) == 1, "has cell-type keys", cell_type_keys,
             "one (no hierarchy)")  # fmt: skip
    ((condition_key, condition_names),) = conditions.items()
    cell_types = [str(name) for name in value("cell_types_")]
    labelled = value("prototypes_labeled_")
    means = labelled.get("mean") if isinstance(labelled, dict) else None
    if not isinstance(means, torch.Tensor) or means.ndim != 2 or means.shape[0] != len(cell_types):
        msg = f"{directory} has no labelled prototypes, one per cell type: it was trained without cell types"
        raise UserInputError(msg, hint="fedarches imports scPoli references trained with cell_type_keys")
    state = rename(raw, _RENAMES, directory, "scPoli")
    if state["theta"].shape != (len(genes), len(condition_names)):
        shape = tuple(state["theta"].shape)
        msg = f"theta has shape {shape} for {len(genes)} genes and {len(condition_names)} conditions"
        raise UserInputError(msg, hint=_HINT)
    return ScArchesScPoli(
        state=state,
        genes=genes,
        condition_key=str(condition_key),
        conditions=[str(c) for c in condition_names],
        cell_type_key=str(cell_type_keys[0]),
        cell_types=cell_types,
        prototypes=means.detach().cpu().numpy().astype(np.float32),
        prototype_variance=_pooled_variance(labelled.get("cov"), means.shape[1]),
        n_latent=int(value("latent_dim_")),
        n_hidden=int(value("hidden_layer_sizes_")[0]),
        embedding_dim=int(np.sum(value("embedding_dims_"))),
        embedding_max_norm=float(value("embedding_max_norm_")),
        dropout_rate=float(value("dr_rate_")),
    )


def to_model(saved: ScArchesScPoli, adata: AnnData | None = None) -> tuple[SCPOLI, AnnData]:
    """Build fedarches' :class:`SCPOLI` holding ``saved``'s weights and prototypes, and the AnnData it is set up on.

    ``adata``: the reference cells (their condition and cell-type columns as scArches named them), for
    a bundle's embedding and reference summary, and to measure the spread of cells around their
    prototypes (scArches' own covariances come from sampled latents); without it, one empty cell per
    condition registers the model and the spread comes from scArches' covariances.
    """
    import torch

    from fedarches.shared.models.scpoli._model import SCPOLI, UNLABELED_CATEGORY

    given = adata is not None
    adata = registered_anndata(saved.genes, saved.condition_key, saved.conditions, saved.cell_type_key,
                               saved.cell_types, adata, unlabeled=UNLABELED_CATEGORY)  # fmt: skip
    SCPOLI.setup_anndata(adata, batch_key=saved.condition_key, labels_key=saved.cell_type_key)
    model = SCPOLI(
        adata,
        n_latent=saved.n_latent,
        n_hidden=saved.n_hidden,
        embedding_dim=saved.embedding_dim,
        embedding_max_norm=saved.embedding_max_norm,
        dropout_rate=saved.dropout_rate,
    )
    state = model.module.state_dict()
    for name, tensor in saved.state.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            msg = f"tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(state[name].shape)}"
            raise UserInputError(msg, hint=_HINT)
        state[name] = tensor.to(state[name].dtype)
    mapping = [str(c) for c in model._label_mapping()]
    for row, cell_type in enumerate(saved.cell_types):
        state["prototypes"][mapping.index(cell_type)] = torch.as_tensor(saved.prototypes[row])
        state["prototype_set"][mapping.index(cell_type)] = True
    state["prototype_variance"].fill_(saved.prototype_variance)
    model.module.load_state_dict(state)
    model.module.eval()  # as a loaded model: no dropout at inference
    model.is_trained_ = True
    if given:  # the spread of the reference's own latent means around their prototypes, as fedarches' training sets it
        model._set_prototype_variance()
    return model, adata


def _pooled_variance(covariances: Any, n_latent: int) -> float:
    """Per-dimension variance around the prototypes, pooled over types (scPoli keeps each type's covariance)."""
    import torch

    square = isinstance(covariances, torch.Tensor) and covariances.ndim == 3
    if square and covariances.shape[1:] == (n_latent, n_latent):
        traces = torch.diagonal(covariances, dim1=1, dim2=2).sum(dim=1) / n_latent
        value = float(traces[torch.isfinite(traces)].mean()) if torch.isfinite(traces).any() else 1.0
        return value if value > 0 else 1.0
    return 1.0


def _require(ok: bool, what: str, found: Any, needed: str) -> None:
    if not ok:
        msg = f"the scArches model {what} {found!r}; fedarches' scPoli needs {needed}"
        raise UserInputError(msg, hint="retrain with scPoli's defaults (embedding, one hidden layer, recon_loss='nb')")
