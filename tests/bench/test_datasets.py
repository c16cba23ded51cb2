"""The benchmarks' splits, on the demo files shipped in data/demo (CI has no ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from fedarches.bench import datasets

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.fixture(scope="module")
def pbmc() -> ad.AnnData:
    """The demo PBMC file: the cells of symphony_pbmc_3chem.h5ad (raw counts in X and layers['counts'])."""
    return ad.read_h5ad(DEMO / datasets.DEMO_PBMC)


@pytest.fixture(scope="module")
def cellbench() -> ad.AnnData:
    """The demo CellBench files together, raw counts in X (as in ../shared/data)."""
    parts = [ad.read_h5ad(DEMO / f"{name}.h5ad") for name in ("reference", "lab_a", "lab_b", "lab_c")]
    data = ad.concat(parts)
    data.X = data.layers["counts"]
    return data


def test_pbmc_splits_sections() -> None:
    splits = datasets.pbmc_splits()
    assert list(splits) == list(datasets.PBMC_SECTIONS)
    assert list(splits["chemistry"]) == ["lab 3pv1", "lab 3pv2", "lab 5p"]
    assert list(splits["held_out_type"]) == [f"{t} held out, lab 5p" for t in datasets.HELD_OUT_TYPES]
    assert all(s.federated for s in splits["chemistry"].values())
    assert not any(s.federated for s in splits["held_out_type"].values())
    assert len(splits["donors"]["five donors"].labs) == 5
    quick = datasets.pbmc_splits(quick=True)
    assert {section: list(s) for section, s in quick.items()} == {section: list(s)[:1] for section, s in splits.items()}


def test_leave_one_chemistry_out(pbmc: ad.AnnData) -> None:
    split = datasets.pbmc_splits()["chemistry"]["lab 5p"]
    reference, labs = split.select(pbmc.obs, np.random.default_rng(0))
    # the README's batch sizes: 3' v1 290, 3' v2 480, 5' 430
    assert reference.sum() == 290 + 480
    assert labs["lab_5p"].sum() == 430
    assert not (reference & labs["lab_5p"]).any()


def test_held_out_type_leaves_the_reference_only(pbmc: ad.AnnData) -> None:
    split = datasets.pbmc_splits()["held_out_type"]["B held out, lab 5p"]
    reference, labs = split.select(pbmc.obs, np.random.default_rng(0))
    types = pbmc.obs["cell_type"].astype(str).to_numpy()
    batch = pbmc.obs["batch"].astype(str).to_numpy()
    assert reference.sum() == ((batch != "5p") & (types != "B")).sum()
    assert "B" not in set(types[reference])
    assert (types[labs["lab_5p"]] == "B").sum() == ((batch == "5p") & (types == "B")).sum() > 0


def test_reference_share_is_per_batch_and_type(pbmc: ad.AnnData) -> None:
    split = datasets.Split("x", {"lab_3pv1": "3pv1"}, reference_share=0.5)
    reference, labs = split.select(pbmc.obs, np.random.default_rng(0))
    obs = pbmc.obs.assign(ref=reference)
    for (_, _), group in obs.groupby(["batch", "cell_type"], observed=True):
        assert group["ref"].sum() == round(0.5 * len(group))
    assert not (reference & labs["lab_3pv1"]).any()


def test_quick_pbmc_split_files(pbmc: ad.AnnData, tmp_path: Path) -> None:
    split = datasets.pbmc_splits(quick=True)["held_out_type"]["B held out, lab 5p"]
    paths = datasets.write_pbmc_split(split, pbmc, tmp_path / "a", quick=True)
    again = datasets.write_pbmc_split(split, pbmc, tmp_path / "b", quick=True)
    assert set(paths) == {"reference", "lab_5p"}
    facts = datasets.split_facts(paths)
    assert facts["n_cells"] == {"reference": datasets.QUICK_REFERENCE_CELLS, "lab_5p": datasets.QUICK_LAB_CELLS}
    assert "B" not in datasets.cell_types(paths["reference"])
    for part in paths:  # seeded: the same cells every time
        assert list(ad.read_h5ad(paths[part]).obs_names) == list(ad.read_h5ad(again[part]).obs_names)


def test_cellbench_split(cellbench: ad.AnnData, tmp_path: Path) -> None:
    paths = datasets.write_split(cellbench, None, tmp_path)
    reference = ad.read_h5ad(paths["reference"])
    assert set(reference.obs["batch"]) == set(datasets.REFERENCE_BATCHES)
    assert datasets.HELD_OUT not in set(reference.obs["cell_type"])
    assert reference.n_obs == 319 - 82  # demo reference: 319 cells, 82 of them H838
    sizes = datasets.split_facts(paths)["n_cells"]
    assert sizes == {"reference": 237, "lab_a": 210, "lab_b": 240, "lab_c": 252}
    assert datasets.cell_types(paths["lab_c"])["H838"] == 64


def test_cellbench_thinning_lowers_depth(cellbench: ad.AnnData, tmp_path: Path) -> None:
    deep = datasets.split_facts(datasets.write_split(cellbench, None, tmp_path / "deep"))["median_umis"]
    thin = datasets.split_facts(datasets.write_split(cellbench, 500.0, tmp_path / "thin"))["median_umis"]
    for part, umis in thin.items():  # binomial thinning: about 500, give or take sampling noise
        assert umis == pytest.approx(500, rel=0.1)
        assert umis < deep[part]


def test_at_most() -> None:
    mask = np.array([True, False, True, True])
    assert datasets.at_most(mask, 5, np.random.default_rng(0)) is mask
    fewer = datasets.at_most(mask, 2, np.random.default_rng(0))
    assert fewer.sum() == 2
    assert not (fewer & ~mask).any()


def test_research_splits(pbmc: ad.AnnData) -> None:
    splits = {s.name: s for s in datasets.RESEARCH_SPLITS["symphony"]()}
    assert len(splits) == 3 * (1 + len(datasets.RESEARCH_SYMPHONY_HELD_OUT))
    reference, lab = splits["symphony_lab-5p_held-B"].make_masks(pbmc)
    types, batch = pbmc.obs["cell_type"].astype(str).to_numpy(), pbmc.obs["batch"].astype(str).to_numpy()
    assert (lab == (batch == "5p")).all()
    assert (reference == ((batch != "5p") & (types != "B"))).all()
    half = datasets.random_half(pbmc)
    for t in np.unique(types):
        assert half[types == t].sum() == (types == t).sum() // 2


def test_citeseq_gates_reproduce_the_demo_labels() -> None:
    """The benchmark gates with scripts/make_demo_citeseq.py itself, which labelled the demo CITE-seq files."""
    lab = ad.read_h5ad(DEMO / "citeseq_lab.h5ad")
    gates = datasets.demo_citeseq()
    assert gates.DROPPED_PROTEINS[0] not in lab.obsm[datasets.PROTEIN_KEY].columns
    gated = gates.gate_cell_types(lab.obsm[datasets.PROTEIN_KEY])
    assert gated.isna().sum() == lab.obs["cell_type"].isna().sum() > 0
    assert (gated.fillna("-").to_numpy() == lab.obs["cell_type"].astype(object).fillna("-").to_numpy()).all()
    assert (datasets.truth_of(lab) == datasets.UNGATED).sum() == gated.isna().sum()
