"""The data sets of ``../shared/data`` and every split the benchmarks cut from them.

* CellBench lung cell lines (:data:`CELLBENCH`): reference = CEL-seq2 5-line plates p1 + p2
  (:data:`REFERENCE_BATCHES`), labs = :data:`LABS`, :data:`HELD_OUT` left out of the reference where a benchmark
  holds a type out; :func:`write_split` writes it, thinned to a depth or as sequenced.
* PBMC (:func:`pbmc_splits`, `make bench`'s main benchmark): leave one 10x chemistry out of
  ``symphony_pbmc_3chem`` (with and without a held-out type), a random half of ``zheng_sorted_pbmc3500``, five
  donors of ``kang_ctrl_5donors``; :class:`Split` selects the cells, :func:`write_pbmc_split` writes them.
* The backend benchmark's cases (:class:`BackendCase`, :func:`load_case`): symphony's 3' v1 + v2 against 5', and
  the CITE-seq ``citefuse_eccite_pbmc500`` with labels from protein-marker gating.
* The Unknown research's splits (:data:`RESEARCH_SPLITS`, ``unknown-research build``).

Provenance of every file: ``../shared/data/README.md``. ``data/demo/pbmc_3chem.h5ad`` holds the same cells as
``symphony_pbmc_3chem.h5ad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from fedarches.bench.paths import SHARED_DATA
from fedarches.shared.evaluation import thin_to_depth

if TYPE_CHECKING:
    import anndata as ad

SEED = 0

# --- CellBench lung cell lines --------------------------------------------------------------------
CELLBENCH = SHARED_DATA / "cellbench_lung_celllines.h5ad"
REFERENCE_BATCHES = ("celseq2_5cl_p1", "celseq2_5cl_p2")
LABS = {"lab_a": "dropseq_3cl", "lab_b": "celseq2_3cl", "lab_c": "celseq2_5cl_p3"}
HELD_OUT = "H838"

# --- PBMC -----------------------------------------------------------------------------------------
SYMPHONY, ZHENG, KANG = "symphony_pbmc_3chem.h5ad", "zheng_sorted_pbmc3500.h5ad", "kang_ctrl_5donors.h5ad"
CHEMISTRIES = {"3pv1": "10x 3' v1", "3pv2": "10x 3' v2", "5p": "10x 5'"}
HELD_OUT_TYPES = ("B", "NK", "Mono_CD16", "T_CD8")
HELD_OUT_LABS = ("5p",)  # the 5' lab, the odd technology out; every chemistry: the Unknown research
DONORS = ("1015", "1016", "1244", "1256", "1488")
ZHENG_REFERENCE_SHARE, KANG_REFERENCE_SHARE = 0.5, 0.2
PBMC_SECTIONS = {
    "chemistry": "Leave one chemistry out",
    "held_out_type": "Leave one chemistry out, one type held out of the reference",
    "fine_t": "Fine T-cell subsets",
    "donors": "Five donors as five labs",
}
# data/demo/pbmc_3chem.h5ad: the cells of symphony_pbmc_3chem.h5ad; the membership evaluation's PBMC pool is its 5' lab
DEMO_PBMC, DEMO_PBMC_POOL_BATCH = "pbmc_3chem.h5ad", "5p"
# --quick: a tiny subsample of every PBMC split
QUICK_REFERENCE_CELLS, QUICK_LAB_CELLS = 200, 80  # labs above 50 cells, or CellTypist skips majority voting


@dataclass(frozen=True)
class Split:
    """A reference and its labs from one file of ../shared/data.

    The reference is the cells of ``reference_batches``, or (``reference_share``) a seeded random share of the
    cells of every batch and type; each lab is the cells of its batch not in the reference; ``held_out`` is
    left out of the reference. ``federated``: also run a round on loopback with these labs.
    """

    data: str
    labs: dict[str, str]  # lab name: its batch
    reference_batches: tuple[str, ...] = ()
    reference_share: float = 0.0
    held_out: str | None = None
    federated: bool = False

    def select(self, obs: Any, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Masks over ``obs``: the reference's cells and each lab's."""
        batch = obs["batch"].astype(str).to_numpy()
        types = obs["cell_type"].astype(str).to_numpy()
        if self.reference_share:
            reference = np.zeros(len(batch), dtype=bool)
            for b, t in sorted(set(zip(batch, types, strict=True))):
                rows = np.flatnonzero((batch == b) & (types == t))
                reference[rng.choice(rows, round(self.reference_share * rows.size), replace=False)] = True
        else:
            reference = np.isin(batch, self.reference_batches)
        labs = {lab: (batch == b) & ~reference for lab, b in self.labs.items()}
        if self.held_out is not None:
            reference &= types != self.held_out
        return reference, labs


def pbmc_splits(quick: bool = False) -> dict[str, dict[str, Split]]:
    """Every PBMC split by section (``--quick``: the first of each section)."""

    def chemistry(lab: str, held_out: str | None = None) -> Split:
        others = tuple(c for c in CHEMISTRIES if c != lab)
        return Split(SYMPHONY, {f"lab_{lab}": lab}, reference_batches=others, held_out=held_out,
                     federated=held_out is None)  # fmt: skip

    sections = {
        "chemistry": {f"lab {c}": chemistry(c) for c in CHEMISTRIES},
        "held_out_type": {f"{t} held out, lab {c}": chemistry(c, t) for t in HELD_OUT_TYPES for c in HELD_OUT_LABS},
        "fine_t": {"random half": Split(ZHENG, {"lab": "zheng2017_sorted"}, reference_share=ZHENG_REFERENCE_SHARE)},
        "donors": {
            "five donors": Split(
                KANG, {f"donor_{d}": d for d in DONORS}, reference_share=KANG_REFERENCE_SHARE, federated=True
            )
        },
    }
    if quick:
        return {section: dict(list(splits.items())[:1]) for section, splits in sections.items()}
    return sections


# --- writing splits -------------------------------------------------------------------------------
def write_parts(data: ad.AnnData, masks: dict[str, np.ndarray], out: Path) -> dict[str, Path]:
    """One .h5ad per part (``reference`` and each lab) of ``data``'s cells; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, mask in masks.items():
        paths[part] = out / f"{part}.h5ad"
        data[np.asarray(mask)].copy().write_h5ad(paths[part])
    return paths


def write_split(data: ad.AnnData, depth: float | None, out: Path) -> dict[str, Path]:
    """Reference (without the held-out type) and one .h5ad per lab, thinned to ``depth`` UMIs per cell."""
    data = data.copy()
    if depth is not None:
        data.X = thin_to_depth(data.X, depth, np.random.default_rng(SEED))
    in_reference = data.obs["batch"].isin(REFERENCE_BATCHES) & (data.obs["cell_type"] != HELD_OUT)
    labs = {lab: (data.obs["batch"] == batch).to_numpy() for lab, batch in LABS.items()}
    return write_parts(data, {"reference": in_reference.to_numpy(), **labs}, out)


def at_most(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``mask`` with at most ``n`` of its cells kept, drawn at random."""
    rows = np.flatnonzero(mask)
    if rows.size <= n:
        return mask
    out = np.zeros_like(mask)
    out[rng.choice(rows, n, replace=False)] = True
    return out


def write_pbmc_split(split: Split, data: ad.AnnData, out: Path, *, quick: bool) -> dict[str, Path]:
    """The split's reference and labs as .h5ad files (``quick``: a few cells of each, seeded)."""
    rng = np.random.default_rng(SEED)
    reference, labs = split.select(data.obs, rng)
    if quick:
        reference = at_most(reference, QUICK_REFERENCE_CELLS, rng)
        labs = {lab: at_most(mask, QUICK_LAB_CELLS, rng) for lab, mask in labs.items()}
    return write_parts(data, {"reference": reference, **labs}, out)


def depth_and_size(path: Path) -> tuple[float, int]:
    """Median UMIs per cell and number of cells of one split file (read once)."""
    import anndata as ad

    x = ad.read_h5ad(path).X
    return float(np.median(np.asarray(x.sum(axis=1)).ravel())), int(x.shape[0])


def split_facts(paths: dict[str, Path]) -> dict[str, Any]:
    """Median UMIs per cell, cells and file size of each part of a split."""
    facts = {k: depth_and_size(p) for k, p in paths.items()}
    return {
        "median_umis": {k: umis for k, (umis, _) in facts.items()},
        "n_cells": {k: n for k, (_, n) in facts.items()},
        "raw_h5ad_bytes": {k: p.stat().st_size for k, p in paths.items()},
    }


def cell_types(path: Path) -> dict[str, int]:
    """Cells of each type in one split file."""
    import anndata as ad

    obs = ad.read_h5ad(path, backed="r").obs
    return {str(k): int(v) for k, v in obs["cell_type"].astype(str).value_counts().sort_index().items()}


# --- the backend benchmark's cases ----------------------------------------------------------------
PROTEIN_KEY = "protein_expression"
UNGATED = "(no gate)"


@dataclass(frozen=True)
class BackendCase:
    """One data set and split: the reference's batches and the lab's."""

    data: str
    reference_batches: tuple[str, ...]
    lab_batch: str
    proteins: bool = False

    def describe(self) -> str:
        """The case in one line of markdown."""
        return f"`{self.data}`: reference {' + '.join(self.reference_batches)}, lab {self.lab_batch}"


PBMC_CASE = BackendCase("symphony_pbmc_3chem.h5ad", ("3pv1", "3pv2"), "5p")
CITESEQ_CASE = BackendCase(
    "citefuse_eccite_pbmc500.h5ad", ("HTO28_5P", "HTO29_5P", "HTO44_5P"), "HTO30_5P", proteins=True
)


def demo_citeseq() -> ModuleType:
    """The CITE-seq protein gates and dropped proteins (:mod:`fedarches.bench.citeseq_gates`), as the demo uses them."""
    from fedarches.bench import citeseq_gates

    return citeseq_gates


def subsample(adata: ad.AnnData, n: int, rng: np.random.Generator) -> ad.AnnData:
    """At most ``n`` cells of ``adata``, drawn without replacement, in their original order."""
    if adata.n_obs <= n:
        return adata.copy()
    return adata[np.sort(rng.choice(adata.n_obs, n, replace=False))].copy()


def load_case(case: BackendCase, n_reference: int, n_lab: int) -> tuple[ad.AnnData, ad.AnnData]:
    """The reference (cells with a type only) and the lab of ``case``, at most ``n_*`` cells each (seeded).

    CITE-seq: ``cell_type`` comes from protein-marker gating over all cells (the data has no labels),
    the proteins the demo drops are dropped (``make_demo_citeseq.DROPPED_PROTEINS``).
    """
    import anndata as ad

    data = ad.read_h5ad(SHARED_DATA / case.data)
    if case.proteins:
        gates = demo_citeseq()
        proteins = data.obsm[PROTEIN_KEY].drop(columns=gates.DROPPED_PROTEINS)
        data.obsm[PROTEIN_KEY] = proteins
        data.obs["cell_type"] = gates.gate_cell_types(proteins).to_numpy()
    in_reference = data.obs["batch"].isin(case.reference_batches) & data.obs["cell_type"].notna()
    rng = np.random.default_rng(SEED)
    reference = subsample(data[in_reference.to_numpy()], n_reference, rng)
    lab = subsample(data[(data.obs["batch"] == case.lab_batch).to_numpy()], n_lab, rng)
    return reference, lab


def truth_of(lab: ad.AnnData) -> np.ndarray:
    """The lab's true types, ungated cells (NaN) as :data:`UNGATED`."""
    return lab.obs["cell_type"].astype(object).fillna(UNGATED).astype(str).to_numpy()


# --- the Unknown research's splits ----------------------------------------------------------------
RESEARCH_SYMPHONY_HELD_OUT = ("B", "NK", "Mono_CD16", "T_CD8")
RESEARCH_ZHENG_HELD_OUT = ("CD4Treg", "CD4TCM")
RESEARCH_KANG_LAB_DONOR = "1488"
RESEARCH_KANG_HELD_OUT = ("NK cells",)


@dataclass(frozen=True)
class ResearchSplit:
    """One reference build and one lab: masks over a dataset's cells."""

    name: str
    dataset: str  # file stem under ../shared/data
    lab: str  # description of the lab
    held_out: str | None
    make_masks: Callable[[Any], tuple[np.ndarray, np.ndarray]]  # adata -> (reference, lab)
    batch_key: str = "batch"


def _symphony_splits() -> list[ResearchSplit]:
    splits = []
    for lab in ("3pv1", "3pv2", "5p"):
        for held in (None, *RESEARCH_SYMPHONY_HELD_OUT):

            def masks(a: Any, lab: str = lab, held: str | None = held) -> tuple[np.ndarray, np.ndarray]:
                batch = a.obs["batch"].astype(str).to_numpy()
                types = a.obs["cell_type"].astype(str).to_numpy()
                return (batch != lab) & (types != held), batch == lab

            name = f"symphony_lab-{lab}_held-{held or 'none'}"
            splits.append(ResearchSplit(name, "symphony_pbmc_3chem", f"chemistry {lab}", held, masks))
    return splits


def random_half(a: Any, seed: int = 0) -> np.ndarray:
    """Stratified 50/50: True = reference."""
    rng = np.random.default_rng(seed)
    types = a.obs["cell_type"].astype(str).to_numpy()
    ref = np.zeros(a.n_obs, dtype=bool)
    for t in np.unique(types):
        cells = rng.permutation(np.flatnonzero(types == t))
        ref[cells[: len(cells) // 2]] = True
    return ref


def _zheng_splits() -> list[ResearchSplit]:
    splits = []
    for held in (None, *RESEARCH_ZHENG_HELD_OUT):

        def masks(a: Any, held: str | None = held) -> tuple[np.ndarray, np.ndarray]:
            ref = random_half(a)
            return ref & (a.obs["cell_type"].astype(str).to_numpy() != held), ~ref

        splits.append(
            ResearchSplit(f"zheng_half_held-{held or 'none'}", "zheng_sorted_pbmc3500", "random half", held, masks)
        )
    return splits


def _kang_splits() -> list[ResearchSplit]:
    splits = []
    for held in (None, *RESEARCH_KANG_HELD_OUT):

        def masks(a: Any, held: str | None = held) -> tuple[np.ndarray, np.ndarray]:
            donor = a.obs["batch"].astype(str).to_numpy()
            ref = (donor != RESEARCH_KANG_LAB_DONOR) & (a.obs["cell_type"].astype(str).to_numpy() != held)
            return ref, donor == RESEARCH_KANG_LAB_DONOR

        tag = (held or "none").replace(" ", "_")
        name = f"kang_lab-{RESEARCH_KANG_LAB_DONOR}_held-{tag}"
        splits.append(ResearchSplit(name, "kang_ctrl_5donors", "donor", held, masks))
    return splits


RESEARCH_SPLITS: dict[str, Callable[[], list[ResearchSplit]]] = {
    "symphony": _symphony_splits,
    "zheng": _zheng_splits,
    "kang": _kang_splits,
}
