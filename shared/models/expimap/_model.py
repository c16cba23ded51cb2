"""``EXPIMAP``: scArches' expiMap as a scvi-tools model (set-up, training, programs, surgery).

Defaults follow scArches' expiMap surgery tutorial (``expimap_surgery_pipeline_basic``): three
hidden layers of 256, dropout 0.05, layer norm, negative-binomial reconstruction; a reference trains
up to 400 epochs with early stopping (patience 50), group lasso ``alpha=0.7``, KL weight
``alpha_kl=0.5`` reached linearly over 100 epochs, Adam with ``lr=1e-3``, ``eps=0.01`` and no weight
decay; a query trains with ``alpha_kl=0.1``, no group lasso (its decoder is frozen) and patience 20.
The mask comes from ``adata.varm['I']`` with program names in ``adata.uns['terms']``
(:func:`fedarches.shared.gene_programs.add_gene_programs` reads a GMT file into them).

Where this differs from scArches 0.6.1, on purpose: scvi-tools' learning-rate plateau scheduler is off
(the tutorial divides the rate by 10 after 13 epochs without improvement; it cut too early for trVAE
here, see :mod:`fedarches.shared.models.trvae`); latents are posterior means (the tutorial samples);
surgery trains only the new conditions' columns (scArches trains whole ``cond_L`` weights and ``theta``,
whose reference columns get no gradient from one-hot inputs but do get Adam's updates when weight
decay is on); new programs get no HSIC penalty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scvi.model.base import ArchesMixin, BaseModelClass, UnsupervisedTrainingMixin, VAEMixin

from fedarches.shared.gene_programs import MASK_KEY, TERMS_KEY
from fedarches.shared.models._base import CountsSetupMixin
from fedarches.shared.models._surgery import FC_LAYER_OPTIONS, reference_batch_count, train_only_new_conditions
from fedarches.shared.models.expimap._module import ExpiMapModule
from fedarches.shared.models.expimap._regularizers import ProgramRegularizer

if TYPE_CHECKING:
    from anndata import AnnData

TUTORIAL_EPOCHS = 400
TRAINABLE_IN_SURGERY = {"encoder_first.cond_L.weight": 1, "decoder_cond.weight": 1, "theta": 1}
NEW_PROGRAM_TENSORS = (
    "decoder_new_programs",
    "ext_mean_encoder.weight",
    "ext_mean_encoder.bias",
    "ext_log_var_encoder.weight",
    "ext_log_var_encoder.bias",
)


class EXPIMAP(CountsSetupMixin, ArchesMixin, VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """expiMap (Lotfollahi et al. 2023): an interpretable conditional VAE, one latent dimension per gene program.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, with the mask in ``varm[mask_key]`` and the
        programs' names in ``uns[terms_key]``.
    mask_key, terms_key
        Where the mask (genes x programs, 0/1) and the names are.
    n_hidden
        Encoder layer widths (scArches' ``hidden_layer_sizes``).
    dropout_rate
        Dropout after each hidden layer.
    use_layer_norm
        Layer norm after each hidden layer.
    terms
        The programs' names; taken from ``adata`` when ``None`` (a saved model records them, and its
        mask is part of its weights).
    n_new_programs
        Unconstrained programs added in surgery (see :meth:`load_query_data`).
    """

    _module_cls = ExpiMapModule

    def __init__(
        self,
        adata: AnnData | None = None,
        mask_key: str = MASK_KEY,
        terms_key: str = TERMS_KEY,
        n_hidden: tuple[int, ...] = (256, 256, 256),
        dropout_rate: float = 0.05,
        use_layer_norm: bool = True,
        terms: list[str] | None = None,
        n_new_programs: int = 0,
    ) -> None:
        super().__init__(adata)
        mask = None
        if terms is None:
            mask, terms = _mask_of(adata, mask_key, terms_key)
        stats = self.summary_stats
        self.module = self._module_cls(
            n_input=stats.n_vars,
            n_batch=stats.n_batch,
            mask=mask,
            n_programs=len(terms),
            n_hidden=tuple(n_hidden),
            dropout_rate=dropout_rate,
            use_layer_norm=use_layer_norm,
            n_new_programs=n_new_programs,
        )
        self.terms = [str(t) for t in terms]
        self._model_summary_string = f"expiMap: {stats.n_batch} conditions, {len(terms)} gene programs" + (
            f" + {n_new_programs} new" if n_new_programs else ""
        )
        self.n_reference_batches: int | None = None  # set by load_query_data
        self.init_params_ = self._get_init_params(locals())

    def train(
        self,
        max_epochs: int | None = TUTORIAL_EPOCHS,
        lr: float = 1e-3,
        eps: float = 0.01,
        weight_decay: float = 0.0,
        alpha: float | None = None,
        alpha_kl: float | None = None,
        gamma_new_programs: float | None = None,
        n_epochs_kl_warmup: int = 100,
        early_stopping: bool = True,
        early_stopping_patience: int | None = None,
        plan_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Train with the tutorial's recipe (a reference, or a query after :meth:`load_query_data`).

        Parameters
        ----------
        max_epochs
            Most epochs (early stopping usually ends sooner).
        lr, eps, weight_decay
            Adam's (a query: weight decay is always 0).
        alpha
            Group-lasso weight on the annotated programs (default: 0.7 for a reference, off for a query).
        alpha_kl
            KL weight (default: 0.5 for a reference, 0.1 for a query).
        gamma_new_programs
            L1 weight on the programs surgery added (scArches' ``gamma_ext``; default off).
        n_epochs_kl_warmup
            Epochs over which the KL weight rises to ``alpha_kl`` (scArches' ``alpha_epoch_anneal``).
        early_stopping, early_stopping_patience
            Stop when the validation loss has not improved for this many epochs (default 50 for a
            reference, 20 for a query).
        plan_kwargs
            Further :class:`~scvi.train.TrainingPlan` arguments.
        **kwargs
            :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train` arguments.
        """
        is_query = self.n_reference_batches is not None
        self.module.kl_scale = alpha_kl if alpha_kl is not None else (0.1 if is_query else 0.5)
        if alpha is None:
            alpha = None if is_query else 0.7
        plan = {
            "lr": lr,
            "eps": eps,
            "weight_decay": 0.0 if is_query else weight_decay,
            "n_epochs_kl_warmup": n_epochs_kl_warmup,
            **{k: v for k, v in (plan_kwargs or {}).items() if not (is_query and k == "weight_decay")},
        }
        callbacks = [*kwargs.pop("callbacks", []), ProgramRegularizer(alpha, gamma_new_programs)]
        super().train(
            max_epochs=int(max_epochs or TUTORIAL_EPOCHS),
            plan_kwargs=plan,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience or (20 if is_query else 50),
            callbacks=callbacks,
            **kwargs,
        )

    # ---- gene programs ----------------------------------------------------------------------------
    @property
    def program_names(self) -> list[str]:
        """Every latent dimension's program: the annotated ones, then ``new_0``, ``new_1``, ..."""
        return self.terms + [f"new_{i}" for i in range(self.module.n_new_programs)]

    def nonzero_terms(self) -> np.ndarray:
        """Which latent dimensions are active (scArches' name): the group lasso left their decoder column non-zero."""
        return self.module.active_programs()

    def get_latent_representation(
        self, adata: AnnData | None = None, indices: Any = None, *, only_active: bool = False, **kwargs: Any
    ) -> np.ndarray:
        """Posterior means, one column per program (``only_active``: the active programs only)."""
        latent = super().get_latent_representation(adata, indices=indices, **kwargs)
        return latent[:, self.nonzero_terms()] if only_active else latent

    def latent_directions(self) -> np.ndarray:
        """+1 or -1 per program: the sign of its decoder weights' sum (scArches' ``method="sum"``); 0 if off.

        Multiplying a program's latent by its direction makes larger values mean higher expression of its genes.
        """
        return np.sign(self.module.program_weights().sum(dim=0).cpu().numpy()).astype(np.float32)

    def term_genes(self, term: str | int) -> pd.DataFrame:
        """A program's genes by decreasing absolute decoder weight: ``genes``, ``weights``, ``in_mask``."""
        index = self.program_names.index(term) if isinstance(term, str) else int(term)
        weights = self.module.program_weights()[:, index].cpu().numpy()
        order = np.argsort(-np.abs(weights), kind="stable")[: int((weights != 0).sum())]
        in_mask = np.zeros(len(weights), dtype=bool)
        if index < self.module.n_programs:
            in_mask = self.module.mask[:, index].cpu().numpy() > 0
        return pd.DataFrame(
            {"genes": self.adata.var_names[order], "weights": weights[order], "in_mask": in_mask[order]}
        )

    # ---- surgery ------------------------------------------------------------------------------------
    @classmethod
    def load_query_data(cls, adata: AnnData, reference_model: Any, new_programs: int = 0, **kwargs: Any) -> EXPIMAP:
        """Do scArches surgery: new conditions' columns train, everything else stays frozen.

        Parameters
        ----------
        adata
            The query, with the reference's genes (no mask needed: the reference's is in its weights).
        reference_model
            The reference (a model or the directory it was saved to).
        new_programs
            Unconstrained programs to learn from the query (scArches' ``new_n_ext``): each gets a
            latent dimension and a decoder column over every gene, trained with the new conditions.
        **kwargs
            :meth:`~scvi.model.base.ArchesMixin.load_query_data` arguments.
        """
        kwargs = {k: v for k, v in kwargs.items() if k not in FC_LAYER_OPTIONS}
        model = super().load_query_data(adata, reference_model, unfrozen=True, **kwargs)
        model.n_reference_batches = reference_batch_count(reference_model)
        if new_programs:
            model.add_new_programs(new_programs)
        train_only_new_conditions(model.module, TRAINABLE_IN_SURGERY, model.n_reference_batches)
        for name, parameter in model.module.named_parameters():
            if name in NEW_PROGRAM_TENSORS:
                parameter.requires_grad = True
        return model

    def add_new_programs(self, n: int) -> None:
        """Give the module ``n`` new unconstrained programs (freshly initialised), keeping every other value."""
        old = self.module
        state = old.state_dict()
        module = self._module_cls(
            n_input=old.n_input,
            n_batch=old.n_batch,
            mask=old.mask.cpu().numpy(),
            n_hidden=tuple(self.init_params_["non_kwargs"]["n_hidden"]),
            dropout_rate=self.init_params_["non_kwargs"]["dropout_rate"],
            use_layer_norm=self.init_params_["non_kwargs"]["use_layer_norm"],
            n_new_programs=n,
        )
        missing, unexpected = module.load_state_dict(state, strict=False)
        if unexpected or set(missing) - set(NEW_PROGRAM_TENSORS):
            msg = f"cannot add programs: unexpected {unexpected}, missing {missing}"
            raise RuntimeError(msg)
        self.module = module.to(next(old.parameters()).device)
        self.init_params_["non_kwargs"]["n_new_programs"] = n
        self._model_summary_string += f" + {n} new"


def _mask_of(adata: AnnData | None, mask_key: str, terms_key: str) -> tuple[np.ndarray, list[str]]:
    """The genes x programs mask and the programs' names of ``adata``; ValueError naming what is missing."""
    if adata is None or mask_key not in adata.varm:
        msg = (
            f"expiMap needs a gene-program mask in adata.varm[{mask_key!r}] "
            "(fedarches.shared.gene_programs.add_gene_programs(adata, 'programs.gmt') adds one)"
        )
        raise ValueError(msg)
    mask = np.asarray(adata.varm[mask_key])
    mask = np.asarray(mask.toarray() if hasattr(mask, "toarray") else mask, dtype=np.float32)
    if mask.ndim != 2 or mask.shape[1] == 0 or not np.isin(mask, (0, 1)).all():
        msg = f"adata.varm[{mask_key!r}] must be a genes x programs 0/1 matrix with at least one program"
        raise ValueError(msg)
    names = list(adata.uns.get(terms_key, [f"program_{i}" for i in range(mask.shape[1])]))
    if len(names) != mask.shape[1]:
        msg = f"adata.uns[{terms_key!r}] names {len(names)} programs, the mask has {mask.shape[1]}"
        raise ValueError(msg)
    return mask, [str(n) for n in names]
