"""scArches surgery for the models written here: train only the new conditions' slices of some tensors.

scvi-tools' ``ArchesMixin.load_query_data`` grows every tensor that has a column (or row) per
condition and then freezes parts of ``FCLayers``; these models have no ``FCLayers``, so after its
set-up (``unfrozen=True``) :func:`train_only_new_conditions` freezes everything but the named tensors
and zeroes, in each of them, the gradient of the reference's conditions: with no weight decay those
stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from scvi import REGISTRY_KEYS

# options of scvi-tools' load_query_data that freeze parts of FC layers: they do not apply here
FC_LAYER_OPTIONS = (
    "unfrozen",
    "freeze_dropout",
    "freeze_expression",
    "freeze_decoder_first_layer",
    "freeze_batchnorm_encoder",
    "freeze_batchnorm_decoder",
    "freeze_classifier",
)


def train_only_new_conditions(module: torch.nn.Module, grown: Mapping[str, int], n_reference: int) -> None:
    """Freeze every parameter but ``grown`` (name -> the axis with one slice per condition).

    In those, the first ``n_reference`` slices along the axis (the reference's conditions) get no gradient.
    """
    parameters = dict(module.named_parameters())
    for name, parameter in parameters.items():
        parameter.requires_grad = name in grown
    for name, axis in grown.items():
        parameters[name].register_hook(_zero_leading(n_reference, axis=axis))


def _zero_leading(n: int, *, axis: int) -> Any:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad.narrow(axis, 0, n).zero_()
        return grad

    return hook


def reference_batch_count(reference_model: Any) -> int:
    """Conditions of the reference (a loaded model, or a directory holding one)."""
    from scvi.model.base import BaseModelClass

    if isinstance(reference_model, BaseModelClass):
        registry = reference_model.registry_
    else:
        from scvi.model.base._save_load import _load_saved_files

        registry = _load_saved_files(str(reference_model), load_adata=False, map_location="cpu")[0]["registry_"]
    return len(registry["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]["categorical_mapping"])
