"""CITE-seq backends without training: registry, adapter allow-list, and every check of protein inputs."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fedarches.client.query import prepare_query
from fedarches.shared import crypto
from fedarches.shared._constants import ADATA_KEYS
from fedarches.shared.backends import BACKENDS, MODEL_CLASSES, backend_for, get_backend
from fedarches.shared.backends.citeseq import (
    MissingProteinsWarning,
    TOTALANVIBackend,
    TOTALVIBackend,
    align_query_proteins,
    reference_batches,
)
from fedarches.shared.bundle import BundleContents, ReferenceBundle, write_bundle
from fedarches.shared.errors import AdapterError, QueryDataError, UserInputError

PROTEINS = ["CD3", "CD4", "CD19"]
GENES = [f"GENE{i}" for i in range(6)]
N_CELLS = 5
# Tensors scvi-tools' surgery grows on a TOTALVI reference with fedarches' architecture (read off a
# real probe: `grown_tensors` of a totalVI bundle built from data/demo/citeseq_reference.h5ad).
TOTALVI_GROWN = [
    "background_pro_alpha",
    "background_pro_log_beta",
    "log_per_batch_efficiency",
    "encoder.encoder.fc_layers.Layer 0.0.weight",
    "encoder.encoder.fc_layers.Layer 1.0.weight",
    "encoder.l_gene_encoder.fc_layers.Layer 0.0.weight",
    "decoder.px_decoder.fc_layers.Layer 0.0.weight",
    "decoder.px_scale_decoder.fc_layers.Layer 0.0.weight",
    "decoder.py_back_decoder.fc_layers.Layer 0.0.weight",
    "decoder.py_back_mean_log_alpha.fc_layers.Layer 0.0.weight",
    "decoder.py_back_mean_log_beta.fc_layers.Layer 0.0.weight",
    "decoder.py_fore_decoder.fc_layers.Layer 0.0.weight",
    "decoder.py_fore_scale_decoder.fc_layers.Layer 0.0.weight",
    "decoder.sigmoid_decoder.fc_layers.Layer 0.0.weight",
    "decoder.px_dropout_decoder_gene.fc_layers.Layer 0.0.weight",
    "decoder.py_background_decoder.fc_layers.Layer 0.0.weight",
]


def _bundle(
    tmp_path: Path,
    keys: tuple[Path, Path],
    model_class: str = "TOTALVI",
    lineage: list | None = None,
    **setup: str,
) -> ReferenceBundle:
    """A signed bundle of a CITE-seq model (fake model bytes: enough for everything before torch)."""
    added = [b for step in lineage or [] for batches in step["labs"].values() for b in batches]
    contents = BundleContents(
        model_pt=b"not a real model" * 10,
        model_class=model_class,
        setup_args={"batch_key": "batch", "protein_expression_obsm_key": "protein_expression", **setup},
        batch_categories=["ref1", "ref2", *added],
        label_categories=["T", "B"],
        gene_ids=GENES,
        description={"protein_names": PROTEINS, **({"lineage": lineage} if lineage else {})},
    )
    name = f"bundle-{model_class}{'-atlas' if lineage else ''}"
    path = write_bundle(tmp_path / name, contents, crypto.load_private_key(keys[0]))
    return ReferenceBundle.open(path, keys[1])


@pytest.fixture
def bundle(tmp_path: Path, keys: tuple[Path, Path]) -> ReferenceBundle:
    return _bundle(tmp_path, keys)


def _rna(n_cells: int = N_CELLS) -> ad.AnnData:
    counts = sp.csr_matrix(np.arange(1, n_cells * len(GENES) + 1, dtype=np.float32).reshape(n_cells, -1) % 7)
    obs = pd.DataFrame({"sample": ["s1"] * n_cells}, index=[f"cell{i}" for i in range(n_cells)])
    return ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=GENES), layers={"counts": counts.copy()})


def _proteins(names: list[str] = PROTEINS, n_cells: int = N_CELLS) -> pd.DataFrame:
    values = np.arange(n_cells * len(names), dtype=np.int64).reshape(n_cells, -1) * 3
    return pd.DataFrame(values, index=[f"cell{i}" for i in range(n_cells)], columns=names)


def _with_proteins(proteins: pd.DataFrame | np.ndarray) -> ad.AnnData:
    adata = _rna()
    adata.obsm["protein_expression"] = proteins
    return adata


def _mudata(prot_values: np.ndarray | None = None, names: list[str] = PROTEINS, **layers: np.ndarray) -> md.MuData:
    rna = _rna()
    values = _proteins(names).to_numpy(dtype=np.float32) if prot_values is None else prot_values
    prot = ad.AnnData(X=values, obs=pd.DataFrame(index=rna.obs_names), var=pd.DataFrame(index=names), layers=layers)
    return md.MuData({"rna": rna, "prot": prot})


# ---- registry and allow-list --------------------------------------------------------------------------------
def test_registered_with_the_tutorials_keys() -> None:
    totalvi, totalanvi = get_backend("totalvi"), get_backend("totalanvi")
    assert isinstance(totalvi, TOTALVIBackend)
    assert isinstance(totalanvi, TOTALANVIBackend)
    assert MODEL_CLASSES["TOTALVI"] == "totalvi"
    assert MODEL_CLASSES["TOTALANVI"] == "totalanvi"
    assert totalvi.latent_key == totalanvi.latent_key == "X_totalVI"
    assert totalvi.modalities == totalanvi.modalities == ("RNA", "protein")
    assert (totalvi.has_classifier, totalanvi.has_classifier) == (False, True)
    assert (totalvi.needs_labels, totalanvi.needs_labels) == (False, True)
    assert (totalvi.module_path, totalanvi.module_path) == ("scvi.model", "scvi.external")
    assert ADATA_KEYS.DENOISED_PROTEIN == "denoised_protein"


def test_model_classes_resolve_to_scvi_tools() -> None:
    import scvi.external
    import scvi.model

    assert BACKENDS["totalvi"].model_cls() is scvi.model.TOTALVI
    assert BACKENDS["totalanvi"].model_cls() is scvi.external.TOTALANVI


@pytest.mark.parametrize("name", ["totalvi", "totalanvi"])
def test_allow_list_is_exactly_the_grown_tensors(name: str) -> None:
    backend = get_backend(name)
    backend.check_adapter_tensors(TOTALVI_GROWN)
    for outside in (
        "py_r",  # protein dispersion: per protein, never per batch
        "px_r",
        "encoder.encoder.fc_layers.Layer 0.1.weight",  # layer norm
        "encoder.encoder.fc_layers.Layer 0.0.bias",
        "decoder.px_decoder.fc_layers.Layer 0.0.weight_extra",
        "classifier.classifier.0.weight",
    ):
        with pytest.raises(AdapterError, match="does not allow to leave a lab"):
            backend.check_adapter_tensors([outside])


def test_rna_backends_refuse_protein_tensors() -> None:
    with pytest.raises(AdapterError, match="background_pro_alpha"):
        get_backend("scanvi").check_adapter_tensors(["background_pro_alpha"])


# ---- the reference ------------------------------------------------------------------------------------------
def test_check_reference_accepts_named_integer_counts() -> None:
    TOTALVIBackend().check_reference(_with_proteins(_proteins()))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.obsm.pop("protein_expression"), r"no obsm\['protein_expression'\]"),
        (lambda a: a.obsm.__setitem__("protein_expression", _proteins().to_numpy()), "without protein names"),
        (lambda a: a.obsm.__setitem__("protein_expression", _proteins() + 0.5), "non-integer values"),
        (lambda a: a.obsm.__setitem__("protein_expression", _proteins() - 100), "negative values"),
        (lambda a: a.obsm.__setitem__("protein_expression", _proteins().iloc[:, :0]), "no columns"),
        (
            lambda a: a.obsm.__setitem__("protein_expression", _proteins().set_axis(["CD3", "CD3", "CD4"], axis=1)),
            r"more than once: \['CD3'\]",
        ),
    ],
)
def test_check_reference_refuses(change, match: str) -> None:
    adata = _with_proteins(_proteins())
    change(adata)
    with pytest.raises(UserInputError, match=match) as info:
        TOTALVIBackend().check_reference(adata)
    assert not isinstance(info.value, QueryDataError)
    assert "protein" in info.value.hint or "ADT" in info.value.hint


def test_totalvi_labels_come_from_the_reference_column() -> None:
    """TOTALVI.setup_anndata registers no labels: the bundle's types come from the labels column."""
    adata = _rna(6)
    adata.obs["cell_type"] = ["T", "B", "Unknown", None, "T", "NK"]
    labels = TOTALVIBackend().reference_labels(None, adata, "cell_type")
    assert list(labels.categories) == ["B", "NK", "T"]
    assert list(labels.codes) == [2, 0, -1, -1, 2, 1]
    assert TOTALVIBackend().label_categories({}) == []
    with pytest.raises(UserInputError, match="records no cell types"):
        TOTALVIBackend().reference_labels(None, adata, None)


def test_bundle_metadata_reads_protein_names_from_the_registry() -> None:
    saved = {
        "attr_dict": {
            "registry_": {
                "setup_method_name": "setup_anndata",
                "field_registries": {"proteins": {"state_registry": {"column_names": np.array(PROTEINS)}}},
            }
        }
    }
    assert TOTALVIBackend().bundle_metadata(saved) == {"protein_names": PROTEINS}
    saved["attr_dict"]["registry_"]["setup_method_name"] = "setup_mudata"
    with pytest.raises(UserInputError, match="setup_mudata"):
        TOTALANVIBackend().bundle_metadata(saved)


# ---- query proteins: AnnData -------------------------------------------------------------------------------
def test_anndata_proteins_are_aligned_to_the_reference_order() -> None:
    adata = _with_proteins(_proteins(["CD19", "CD4", "CD3", "CD99"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs, report = align_query_proteins(adata, PROTEINS, adata.obs_names)
    aligned = inputs["protein_expression"]
    assert list(aligned.columns) == PROTEINS
    pd.testing.assert_series_equal(
        aligned["CD19"], adata.obsm["protein_expression"]["CD19"].astype(np.float32), check_names=False
    )
    assert report == {
        "modality": "protein",
        "source": "obsm['protein_expression']",
        "n_reference_proteins": 3,
        "n_present": 3,
        "missing": [],
        "unused": ["CD99"],
        "rna_only": False,
    }


def test_missing_proteins_warn_and_are_zero_filled() -> None:
    adata = _with_proteins(_proteins(["CD4", "CD8"]))
    with pytest.warns(MissingProteinsWarning, match=r"2 of the reference's 3 proteins.*\['CD8'\] are not in the ref"):
        inputs, report = align_query_proteins(adata, PROTEINS, adata.obs_names)
    aligned = inputs["protein_expression"]
    assert (aligned[["CD3", "CD19"]].to_numpy() == 0).all()
    np.testing.assert_array_equal(aligned["CD4"].to_numpy(), adata.obsm["protein_expression"]["CD4"].to_numpy())
    assert report["n_present"] == 1
    assert report["missing"] == ["CD3", "CD19"]
    assert report["rna_only"] is False


def test_rna_only_query_is_reported_not_refused() -> None:
    adata = _rna()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs, report = align_query_proteins(adata, PROTEINS, adata.obs_names)
    assert inputs == {}
    assert report["rna_only"] is True
    assert report["n_present"] == 0
    assert report["missing"] == PROTEINS
    assert report["n_reference_proteins"] == 3


def test_array_with_protein_names_in_uns() -> None:
    """scvi-tools' older layout: an array in obsm, its names in uns['protein_names']."""
    adata = _with_proteins(_proteins().to_numpy())
    adata.uns["protein_names"] = np.array(PROTEINS)
    inputs, report = align_query_proteins(adata, PROTEINS, adata.obs_names)
    np.testing.assert_array_equal(inputs["protein_expression"].to_numpy(), _proteins().to_numpy())
    assert report["n_present"] == 3


@pytest.mark.parametrize(
    ("proteins", "uns", "match"),
    [
        (_proteins().to_numpy(), None, "array without protein names"),
        (_proteins().to_numpy(), ["CD3", "CD4"], r"names 2 proteins but .* has 3 columns"),
        (_proteins(["CD8", "CD56"]), None, r"none of the query's 2 protein names .* is one of the reference's 3"),
        (_proteins() * 0.5, None, r"non-integer values \(7 entries; e.g. protein 'CD4': 1.5\)"),
        (_proteins() - 4, None, "negative values"),
        (_proteins().astype(float).where(lambda d: d != 3, np.nan), None, "NaN or infinite"),
        (_proteins().astype("Int64").where(lambda d: d != 3, pd.NA), None, "NaN or infinite"),
        (_proteins().astype(str).replace("3", "three"), None, "non-numeric"),
        (_proteins().set_axis(["CD3", "CD4", "CD4"], axis=1), None, r"more than once: \['CD4'\]"),
        (_proteins().set_axis(["CD3", "", "CD19"], axis=1), None, "empty protein names"),
    ],
)
def test_anndata_protein_errors(proteins, uns, match: str) -> None:
    adata = _with_proteins(proteins)
    if uns is not None:
        adata.uns["protein_names"] = uns
    with pytest.raises(QueryDataError, match=match) as info:
        align_query_proteins(adata, PROTEINS, adata.obs_names)
    assert info.value.hint


def test_rows_for_other_cells_are_refused() -> None:
    adata = _with_proteins(_proteins())
    with pytest.raises(QueryDataError, match="holds 5 cells and the query's RNA 4"):
        align_query_proteins(adata, PROTEINS, adata.obs_names[:4])


# ---- query proteins: MuData ------------------------------------------------------------------------------------
def test_mudata_prot_counts_layer_is_preferred_over_x() -> None:
    counts = _proteins().to_numpy(dtype=np.float32)
    clr = np.log1p(counts) - np.log1p(counts).mean(axis=1, keepdims=True)  # normalized X: would be refused
    mdata = _mudata(clr, counts=counts)
    inputs, report = align_query_proteins(mdata, PROTEINS, mdata["rna"].obs_names)
    np.testing.assert_array_equal(inputs["protein_expression"].to_numpy(), counts)
    assert report["source"] == "mod['prot'].layers['counts']"
    with pytest.raises(QueryDataError, match=r"mod\['prot'\].X holds negative values"):
        align_query_proteins(_mudata(clr), PROTEINS, mdata["rna"].obs_names)


def test_mudata_prot_rows_follow_the_rna_cells() -> None:
    mdata = _mudata(sp.csr_matrix(_proteins().to_numpy(dtype=np.float32)))
    reordered = md.MuData({"rna": mdata["rna"], "prot": mdata["prot"][::-1].copy()})
    inputs, _ = align_query_proteins(reordered, PROTEINS, mdata["rna"].obs_names)
    assert list(inputs["protein_expression"].index) == list(mdata["rna"].obs_names)
    np.testing.assert_array_equal(inputs["protein_expression"].to_numpy(), _proteins().to_numpy())
    fewer = md.MuData({"rna": mdata["rna"], "prot": mdata["prot"][:3].copy()})
    with pytest.raises(QueryDataError, match="not the same cells"):
        align_query_proteins(fewer, PROTEINS, mdata["rna"].obs_names)


def test_mudata_without_prot_is_rna_only_and_names_must_match() -> None:
    rna_only = md.MuData({"rna": _rna()})
    _, report = align_query_proteins(rna_only, PROTEINS, rna_only["rna"].obs_names)
    assert report["rna_only"] is True
    other = _mudata(names=["CD8", "CD56", "CD14"])
    with pytest.raises(QueryDataError, match="none of the query's 3 protein names"):
        align_query_proteins(other, PROTEINS, other["rna"].obs_names)


# ---- prepare_query: AnnData and MuData, before torch -----------------------------------------------------------
def test_prepare_query_takes_proteins_from_anndata_and_mudata(bundle: ReferenceBundle) -> None:
    assert backend_for(bundle).name == "totalvi"
    assert bundle.protein_names == PROTEINS
    from_adata = prepare_query(_with_proteins(_proteins()), bundle)
    mdata = _mudata()
    from_mudata = prepare_query(mdata, bundle)
    assert (from_adata.counts != from_mudata.counts).nnz == 0
    assert list(from_mudata.obs_names) == list(mdata.obs_names)
    pd.testing.assert_frame_equal(from_adata.inputs["protein_expression"], from_mudata.inputs["protein_expression"])
    assert from_mudata.inputs_report["source"] == "mod['prot'].X"
    assert from_mudata.counts_source == "mod['rna'].layers['counts']"
    rna_only = prepare_query(_rna(), bundle)
    assert rna_only.inputs == {}
    assert rna_only.inputs_report["rna_only"] is True


def test_prepare_query_finds_a_mudata_batch_column_at_either_level(bundle: ReferenceBundle) -> None:
    mdata = _mudata()
    in_rna = prepare_query(mdata, bundle, batch_key="sample", batch_prefix="lab")
    assert set(in_rna.batches) == {"lab/s1"}
    mdata.obs["run"] = ["r1", "r1", "r2", "r2", "r2"]
    top_level = prepare_query(mdata, bundle, batch_key="run", batch_prefix="lab")
    assert list(top_level.batches) == ["lab/r1", "lab/r1", "lab/r2", "lab/r2", "lab/r2"]
    with pytest.raises(QueryDataError, match="no column 'donor'"):
        prepare_query(mdata, bundle, batch_key="donor")


def test_mudata_without_rna_is_refused(bundle: ReferenceBundle) -> None:
    prot = ad.AnnData(_proteins().to_numpy(dtype=np.float32), var=pd.DataFrame(index=PROTEINS))
    with pytest.raises(QueryDataError, match="no 'rna' modality") as info:
        prepare_query(md.MuData({"prot": prot}), bundle)
    assert "'rna'" in info.value.hint


def test_add_query_inputs_fills_the_registry_key(tmp_path: Path, keys: tuple[Path, Path], bundle) -> None:
    backend = backend_for(bundle)
    query = _rna()
    backend.add_query_inputs(query, bundle, {})
    frame = query.obsm["protein_expression"]
    assert list(frame.columns) == PROTEINS
    assert list(frame.index) == list(query.obs_names)
    assert (frame.to_numpy() == 0).all()
    other = _bundle(tmp_path, keys, "TOTALANVI", protein_expression_obsm_key="adt", protein_names_uns_key="adt_names")
    query = _rna()
    inputs, _ = align_query_proteins(_with_proteins(_proteins()), PROTEINS, query.obs_names)
    backend_for(other).add_query_inputs(query, other, inputs)
    np.testing.assert_array_equal(query.obsm["adt"].to_numpy(), _proteins().to_numpy())
    assert list(query.uns["adt_names"]) == PROTEINS


def test_imputation_conditions_on_the_batches_that_measured_proteins(tmp_path: Path, keys, bundle) -> None:
    """A merged atlas holds labs' (maybe RNA-only) batches; proteins are imputed as the original reference saw them."""
    assert reference_batches(bundle) == ["ref1", "ref2"]
    step = {"parent_bundle": "0123456789abcdef", "round_id": "r1", "labs": {"lab_a": ["lab_a"], "lab_b": ["lab_b/x"]}}
    atlas = _bundle(tmp_path, keys, lineage=[step])
    assert atlas.batch_categories == ["ref1", "ref2", "lab_a", "lab_b/x"]
    assert atlas.protein_names == PROTEINS
    assert reference_batches(atlas) == ["ref1", "ref2"]


def test_bad_proteins_fail_before_torch_is_imported(bundle: ReferenceBundle, keys: tuple[Path, Path]) -> None:
    """The whole check runs in a fresh interpreter, which never imports torch or scvi-tools."""
    script = (
        "import sys, numpy as np, pandas as pd, anndata as ad, scipy.sparse as sp\n"
        "from fedarches.client.query import prepare_query\n"
        "from fedarches.shared.bundle import ReferenceBundle\n"
        "from fedarches.shared.errors import QueryDataError\n"
        "bundle = ReferenceBundle.open(sys.argv[1], sys.argv[2])\n"
        f"counts = sp.csr_matrix(np.ones(({N_CELLS}, {len(GENES)}), dtype=np.float32))\n"
        f"adata = ad.AnnData(counts, var=pd.DataFrame(index={GENES!r}))\n"
        f"adata.obsm['protein_expression'] = pd.DataFrame(np.full(({N_CELLS}, 3), 0.5), index=adata.obs_names, "
        f"columns={PROTEINS!r})\n"
        "try:\n"
        "    prepare_query(adata, bundle)\n"
        "except QueryDataError as err:\n"
        "    print('refused:', err)\n"
        "assert 'torch' not in sys.modules and 'scvi' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(bundle.path), str(keys[1])],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused:" in result.stdout
    assert "non-integer values" in result.stdout
