"""expiMap's regularizers: proximal steps applied to decoder weights after each optimizer step.

* Group lasso over the annotated programs: each program's decoder column ``w`` (its genes) shrinks
  to ``w * max(0, 1 - t / ||w||)``, with ``t = alpha * lr``; a program the data do not support
  reaches exactly zero and is switched off (scArches' ``ProxGroupLasso``, the tutorial's ``alpha=0.7``).
* L1 on the new, unconstrained programs' columns: soft-thresholding by ``gamma * lr``, so each new
  program keeps few genes (scArches' ``ProxL1`` with ``gamma_ext``).

``lr`` is the optimizer's current learning rate, read at every step.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


def group_lasso_step(weights: torch.Tensor, threshold: float) -> None:
    """Shrink each column of ``weights`` (genes x programs) towards zero by ``threshold`` in L2 norm; in place."""
    norms = weights.norm(p=2, dim=0, keepdim=True)
    weights.mul_(torch.clamp(1 - threshold / norms.clamp_min(torch.finfo(weights.dtype).tiny), min=0))


def l1_step(weights: torch.Tensor, threshold: float) -> None:
    """Soft-threshold every entry of ``weights`` by ``threshold``; in place."""
    weights.copy_(torch.sign(weights) * torch.clamp(weights.abs() - threshold, min=0))


class ProgramRegularizer(Callback):
    """Lightning callback that applies expiMap's proximal steps after every training step.

    Parameters
    ----------
    alpha
        Group-lasso weight on the annotated programs (``None`` or 0: off, as in surgery).
    gamma
        L1 weight on new programs (``None`` or 0: off).
    """

    def __init__(self, alpha: float | None, gamma: float | None = None) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha or 0.0, gamma or 0.0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Apply the proximal steps to the module's decoder weights."""
        module = pl_module.module
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        with torch.no_grad():
            if self.alpha and module.decoder_programs.requires_grad:
                group_lasso_step(module.decoder_programs, self.alpha * lr)
            if self.gamma and module.n_new_programs and module.decoder_new_programs.requires_grad:
                l1_step(module.decoder_new_programs, self.gamma * lr)
