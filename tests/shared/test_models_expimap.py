"""expiMap written on scvi-tools' base classes: gene programs, the masked decoder, group lasso, surgery, the backend.

Fast: GMT reading, the proximal steps' math, and a reference and a query (with new programs) on real
PBMC cells over GO programs (few epochs). Slow: the ``expimap`` backend built into a signed bundle,
a lab mapped with ``map_query`` (kNN labels, program activities), and a merged atlas that reproduces
the lab's latent.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from fedarches.shared.backends import get_backend
from fedarches.shared.errors import AdapterError, UserInputError
from fedarches.shared.gene_programs import add_gene_programs, read_gmt
from fedarches.shared.models.expimap import EXPIMAP
from fedarches.shared.models.expimap._regularizers import group_lasso_step, l1_step

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
GMT = DEMO / "go_bp_2023_pbmc.gmt"
GROWN = {"encoder_first.cond_L.weight": 1, "decoder_cond.weight": 1, "theta": 1}
NEW = {"decoder_new_programs", "ext_mean_encoder.weight", "ext_mean_encoder.bias", "ext_log_var_encoder.weight",
       "ext_log_var_encoder.bias"}  # fmt: skip


def test_a_gmt_file_becomes_the_tutorials_mask_and_terms() -> None:
    programs = read_gmt(GMT)
    name = "B Cell Receptor Signaling Pathway (GO:0050853)"  # a name with spaces stays whole
    assert name in programs.programs and "CD79A" in programs.programs[name]
    mask, names = programs.mask(np.array(["cd79a", "CD79B", "MS4A1", "LYZ"]), min_genes=2)  # any case
    assert name in names
    column = mask[:, names.index(name)]
    assert column.tolist() == [1, 1, 1, 0]
    full = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")
    kept = add_gene_programs(full, GMT)
    assert kept == len(full.uns["terms"]) == full.varm["I"].shape[1] and (full.varm["I"].sum(axis=0) > 12).all()


@pytest.mark.parametrize(
    ("text", "match", "hint"),
    [
        ("B cells CD79A CD79B MS4A1\n", "not a GMT line", "tabs"),
        ("A\tx\tCD79A\nA\tx\tLYZ\n", "twice", "unique name"),
        ("\n\n", "no gene programs", "tabs"),
    ],
)
def test_a_file_that_is_not_gmt_is_refused_with_the_format(tmp_path: Path, text: str, match: str, hint: str) -> None:
    path = tmp_path / "programs.gmt"
    path.write_text(text)
    with pytest.raises(UserInputError, match=match) as caught:
        read_gmt(path)
    assert hint in caught.value.hint


def test_programs_that_miss_the_datas_genes_are_refused_naming_symbols() -> None:
    cells = ad.read_h5ad(DEMO / "reference.h5ad")  # CellBench: Ensembl IDs
    with pytest.raises(UserInputError, match="no gene program") as caught:
        add_gene_programs(cells, GMT)
    assert "gene symbols" in caught.value.hint
    with pytest.raises(UserInputError, match="cannot read"):
        read_gmt(DEMO / "missing.gmt")


def test_the_proximal_steps_zero_weak_programs_and_shrink_the_rest() -> None:
    weights = torch.tensor([[3.0, 0.1, 0.0], [4.0, 0.1, 0.0]])  # column norms 5, 0.14, 0
    group_lasso_step(weights, 1.0)
    torch.testing.assert_close(weights[:, 0], torch.tensor([2.4, 3.2]))  # norm 5 -> 4, same direction
    assert torch.equal(weights[:, 1:], torch.zeros(2, 2))
    values = torch.tensor([0.5, -0.5, 0.05, -2.0])
    l1_step(values, 0.1)
    torch.testing.assert_close(values, torch.tensor([0.4, -0.4, 0.0, -1.9]))


def _pbmc_with_programs() -> ad.AnnData:
    adata = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")
    adata.X = adata.layers["counts"]
    add_gene_programs(adata, GMT)
    return adata[:, adata.varm["I"].sum(axis=1) > 0].copy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[EXPIMAP, EXPIMAP, ad.AnnData]:
    import scvi

    scvi.settings.seed = 0
    adata = _pbmc_with_programs()
    reference = adata[adata.obs["batch"] != "5p"].copy()
    EXPIMAP.setup_anndata(reference, batch_key="batch", labels_key="cell_type")
    model = EXPIMAP(reference)
    model.train(max_epochs=12, enable_progress_bar=False)
    directory = tmp_path_factory.mktemp("expimap") / "reference"
    model.save(directory, save_anndata=False)
    query = adata[adata.obs["batch"] == "5p"].copy()
    del query.varm["I"]  # the reference's mask travels in its weights
    query_model = EXPIMAP.load_query_data(query, str(directory), new_programs=2)
    query_model.train(max_epochs=4, gamma_new_programs=0.7, enable_progress_bar=False)
    return model, query_model, query


def test_surgery_trains_only_new_condition_columns_and_new_programs(trained) -> None:
    model, query_model, _ = trained
    before, after = model.module.state_dict(), query_model.module.state_dict()
    assert {name for name in before if after[name].shape != before[name].shape} == set(GROWN)
    assert set(after) - set(before) == NEW
    assert {n for n, p in query_model.module.named_parameters() if p.requires_grad} == set(GROWN) | NEW
    for name, value in before.items():
        if name in GROWN:
            width = value.shape[1]
            assert torch.equal(after[name][:, :width], value), name  # bit-identical
        else:
            assert torch.equal(after[name], value), name
    assert query_model.program_names[-2:] == ["new_0", "new_1"]
    assert query_model.get_latent_representation(only_active=True).shape[1] == query_model.nonzero_terms().sum()


def test_each_program_decodes_only_its_own_genes(trained) -> None:
    model, _, _ = trained
    module = model.module
    assert torch.equal(module.decoder_programs.detach() * (1 - module.mask), torch.zeros_like(module.mask))
    genes = model.term_genes("B Cell Receptor Signaling Pathway (GO:0050853)")
    assert len(genes) > 12 and genes["in_mask"].all() and "CD79A" in set(genes["genes"])
    assert set(np.unique(model.latent_directions())) <= {-1.0, 0.0, 1.0}


def test_a_strong_group_lasso_switches_programs_off(tmp_path: Path) -> None:
    import scvi

    scvi.settings.seed = 0
    adata = _pbmc_with_programs()[:300].copy()
    EXPIMAP.setup_anndata(adata, batch_key="batch")
    model = EXPIMAP(adata, n_hidden=(64,))
    model.train(max_epochs=1, alpha=50.0, enable_progress_bar=False)
    active = model.nonzero_terms()
    assert 0 < active.sum() < len(active)  # the strongest programs survive
    off = model.program_names[int(np.flatnonzero(~active)[0])]
    assert model.term_genes(off).empty
    assert model.get_latent_representation(only_active=True).shape == (300, active.sum())


def test_a_saved_query_with_new_programs_loads_to_the_same_latent(trained, tmp_path: Path) -> None:
    _, query_model, query = trained
    query_model.save(tmp_path / "query", save_anndata=False)
    loaded = EXPIMAP.load(str(tmp_path / "query"), adata=query)
    assert loaded.program_names == query_model.program_names
    np.testing.assert_array_equal(loaded.get_latent_representation(), query_model.get_latent_representation())


def test_a_model_without_a_mask_names_how_to_add_one() -> None:
    adata = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")[:50].copy()
    EXPIMAP.setup_anndata(adata, batch_key="batch")
    with pytest.raises(ValueError, match="add_gene_programs"):
        EXPIMAP(adata)


def test_the_backend_allows_only_condition_columns_and_dispersions_to_leave() -> None:
    backend = get_backend("expimap")
    assert backend.model_class == "EXPIMAP" and backend.needs_gene_programs and backend.model_cls() is EXPIMAP
    backend.check_adapter_tensors(GROWN)
    with pytest.raises(AdapterError, match="does not allow"):
        backend.check_adapter_tensors(["theta", "decoder_new_programs"])


def test_build_reference_refuses_missing_or_misplaced_programs_before_training() -> None:
    from fedarches.server.reference import ReferenceOptions, build_reference

    pbmc = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")
    with pytest.raises(UserInputError, match="needs gene programs") as caught:
        build_reference(pbmc, batch_key="batch", labels_key="cell_type", options=ReferenceOptions(model="expimap"))
    assert "--gene-programs" in caught.value.hint
    with pytest.raises(UserInputError, match="not to scanvi"):
        build_reference(pbmc, batch_key="batch", labels_key="cell_type",
                        options=ReferenceOptions(model="scanvi", gene_programs=GMT))  # fmt: skip
    cells = ad.read_h5ad(DEMO / "reference.h5ad")  # Ensembl IDs: no program fits
    with pytest.raises(UserInputError, match="no gene program"):
        build_reference(cells, batch_key="batch", labels_key="cell_type",
                        options=ReferenceOptions(model="expimap", gene_programs=GMT))  # fmt: skip


@pytest.mark.slow
def test_an_expimap_bundle_maps_a_lab_and_its_atlas_reproduces_the_latent(tmp_path: Path, keys) -> None:
    from fedarches.client.mapping import MappingOptions, embed_with_atlas, map_query
    from fedarches.server.merge import merge_adapters
    from fedarches.server.reference import ReferenceOptions, build_reference
    from fedarches.shared import crypto
    from fedarches.shared.bundle import ReferenceBundle, write_bundle

    pbmc = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")
    options = ReferenceOptions(model="expimap", n_top_genes=600, max_epochs=60, progress_bar=False, threads=1,
                               gene_programs=GMT)  # fmt: skip
    contents = build_reference(pbmc[pbmc.obs["batch"] != "5p"].copy(), batch_key="batch", labels_key="cell_type",
                               options=options)  # fmt: skip
    written = write_bundle(tmp_path / "bundle", contents, crypto.load_private_key(keys[0]))
    bundle = ReferenceBundle.open(written, keys[1])
    assert bundle.setup["backend"] == "expimap" and bundle.embedding is not None
    lab = pbmc[pbmc.obs["batch"] == "5p"].copy()
    result = map_query(lab, bundle, lab_name="lab_5p", options=MappingOptions(max_epochs=20, progress_bar=False))
    assert sorted(result.adapter.tensors) == sorted(GROWN)
    predicted = lab.obs["predicted_cell_type"].astype(str).to_numpy()
    assert (predicted == lab.obs["cell_type"].astype(str).to_numpy()).mean() > 0.75
    programs = lab.obsm["expimap_programs"]
    assert programs.shape == lab.obsm["X_expiMap"].shape and all(" (GO:" in c for c in programs.columns)
    b_cells = lab.obs["cell_type"].astype(str).to_numpy() == "B"
    bcr = programs["B Cell Receptor Signaling Pathway (GO:0050853)"].to_numpy()
    assert bcr[b_cells].mean() > bcr[~b_cells].mean()  # the program reads as B-cell activity
    atlas = merge_adapters(bundle, [("lab_5p", result.adapter)], tmp_path / "atlas", keys[0], round_id="r1")
    np.testing.assert_allclose(embed_with_atlas(lab, atlas, lab_name="lab_5p"), lab.obsm["X_expiMap"], atol=1e-5)
