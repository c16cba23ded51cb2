"""expiMap backend: scArches' interpretable model (:class:`fedarches.shared.models.expimap.EXPIMAP`).

Each latent dimension is a named gene program (a GMT gene set), read from the reference's
``varm['I']`` / ``uns['terms']`` (the reference builder's ``--gene-programs FILE.gmt`` puts them there).
Genes: the highly variable genes that belong to a program; programs: those with more than 12 of
them (the tutorial's rule). Cell types by weighted kNN on the reference embedding of the active
programs. Surgery grows one column per new batch in the first encoder layer's and the decoder's
condition weights and in ``theta``, and trains only those: all an adapter holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from fedarches.shared.backends.base import ReferenceTraining, WrittenHereBackend
from fedarches.shared.errors import UserInputError
from fedarches.shared.gene_programs import MASK_KEY, MIN_GENES, TERMS_KEY

if TYPE_CHECKING:
    from anndata import AnnData

    from fedarches.shared.bundle import ReferenceBundle

PROGRAMS_KEY = "expimap_programs"


class EXPIMAPBackend(WrittenHereBackend):
    """``EXPIMAP``: the scArches tutorial's architecture and training over gene programs, kNN labels."""

    name: ClassVar[str] = "expimap"
    model_class: ClassVar[str] = "EXPIMAP"
    module_path: ClassVar[str] = "fedarches.shared.models.expimap"
    latent_key: ClassVar[str] = "X_expiMap"
    needs_gene_programs: ClassVar[bool] = True
    adapter_tensors: ClassVar[tuple[str, ...]] = (r"encoder_first\.cond_L\.weight", r"decoder_cond\.weight", r"theta")

    def check_reference(self, adata: AnnData) -> None:
        """Refuse a reference without a gene-program mask, before training."""
        if MASK_KEY not in adata.varm:
            msg = f"an expiMap reference needs gene programs: varm[{MASK_KEY!r}] is missing"
            raise UserInputError(msg, hint="give a GMT file with --gene-programs (one gene set a line)")

    def reference_inputs(self, adata: AnnData, train: AnnData) -> None:
        """Carry the mask and the programs' names into the training copy."""
        if MASK_KEY in adata.varm:
            mask = adata.varm[MASK_KEY]
            train.varm[MASK_KEY] = np.asarray(mask.toarray() if hasattr(mask, "toarray") else mask)  # sparse or dense
            names = adata.uns.get(TERMS_KEY, [f"program_{i}" for i in range(train.varm[MASK_KEY].shape[1])])
            train.uns[TERMS_KEY] = [str(n) for n in names]

    def select_features(self, train: AnnData, n_top: int, batch_key: str) -> np.ndarray | None:
        """Highly variable genes among those in a program, then only genes of programs that keep > 12 of them."""
        from fedarches.shared.features import select_variable_genes

        in_program = np.asarray(train.varm[MASK_KEY]).sum(axis=1) > 0
        candidates = train[:, in_program].copy()
        if candidates.n_vars > n_top:
            select_variable_genes(candidates, n_top, batch_key)
            chosen = candidates.var_names[candidates.var["highly_variable"].to_numpy()]
        else:
            chosen = candidates.var_names
        keep = train.var_names.isin(chosen)
        mask = np.asarray(train.varm[MASK_KEY])[keep]
        programs = mask.sum(axis=0) > MIN_GENES
        keep[keep] = mask[:, programs].sum(axis=1) > 0
        return keep

    def new_model(self, cls: type, train: AnnData, options: ReferenceTraining) -> Any:
        """ExpiMap over the programs with more than 12 genes (``n_latent`` does not apply: one per program)."""
        mask = np.asarray(train.varm[MASK_KEY])
        programs = mask.sum(axis=0) > MIN_GENES
        if not programs.any():
            msg = f"no gene program keeps more than {MIN_GENES} of the reference's {train.n_vars} selected genes"
            raise UserInputError(msg, hint="give a GMT file whose gene sets use the reference's gene names")
        train.varm[MASK_KEY] = mask[:, programs].astype(np.int8)
        train.uns[TERMS_KEY] = [n for n, k in zip(train.uns[TERMS_KEY], programs, strict=True) if k]
        return cls(train)

    def latent(self, model: Any, adata: AnnData | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        """Posterior means of the active programs (those the group lasso kept), float32."""
        latent = model.get_latent_representation(adata, indices=indices, only_active=True)
        return np.asarray(latent, dtype=np.float32)

    def cell_outputs(self, model: Any, bundle: ReferenceBundle, latent: np.ndarray) -> dict[str, Any]:
        """``obsm['expimap_programs']``: each active program's activity, signed so that higher means more expressed."""
        active = model.nonzero_terms()
        signed = latent * model.latent_directions()[active]
        names = np.asarray(model.program_names, dtype=object)[active]
        return {PROGRAMS_KEY: pd.DataFrame(signed, index=model.adata.obs_names, columns=names)}
