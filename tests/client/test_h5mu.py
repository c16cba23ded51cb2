"""MuData (.h5mu) queries end to end at the lab: read, refuse bad files and names, write atomically, plot proteins."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from fedarches.client.cli import app
from fedarches.client.outputs import MappingOutputs, write_mapping_outputs
from fedarches.client.plots import informative_proteins, plot_mapping
from fedarches.shared import crypto
from fedarches.shared._constants import ADATA_KEYS
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.shared.datafiles import query_obs, query_suffix, read_query, rna_modality
from fedarches.shared.errors import OutputPathError, QueryDataError

runner = CliRunner()
PROTEINS = ["CD3", "CD4", "CD8", "CD19", "CD14", "IgG1", "IgG2a_control", "CD45"]
MISSING_BUNDLE = Path("/nonexistent/bundle")  # opening it fails (exit 20): a refusal with 11 or 14 came first


def _cells(n: int) -> pd.Index:
    return pd.Index([f"cell{i}" for i in range(n)])


def _mudata(n: int = 60, *, prot: bool = True) -> md.MuData:
    """A small CITE-seq query in the scvi-tools MuData layout: 'rna' (counts in X and layers) and 'prot'."""
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(1.0, (n, 30)).astype(np.float32))
    obs = pd.DataFrame({"batch": pd.Categorical(rng.choice(["p1", "p2"], n)), "donor": rng.choice(["d1", "d2"], n)})
    rna = ad.AnnData(counts, obs=obs.set_index(_cells(n)), var=pd.DataFrame(index=[f"ENSG{i:011d}" for i in range(30)]))
    rna.layers["counts"] = counts.copy()
    mods = {"rna": rna}
    if prot:
        adt = rng.poisson(20.0, (n, len(PROTEINS))).astype(np.float32)
        mods["prot"] = ad.AnnData(adt, obs=pd.DataFrame(index=_cells(n)), var=pd.DataFrame(index=PROTEINS))
    return md.MuData(mods)


def _annotate(data: ad.AnnData | md.MuData, *, umap: bool = True, proteins: bool = True) -> None:
    """What map_query writes, by the convention (top level of a MuData): predictions, latent, denoised proteins."""
    rng = np.random.default_rng(1)
    n = data.n_obs
    kind = np.where(np.arange(n) < n // 2, "T cell", "B cell")
    data.obs[ADATA_KEYS.PREDICTION] = pd.Categorical(kind, categories=["T cell", "B cell"])
    data.obs[ADATA_KEYS.CONFIDENCE] = rng.uniform(0.3, 1.0, n).astype(np.float32)
    data.obs[ADATA_KEYS.LOW_CONFIDENCE] = data.obs[ADATA_KEYS.CONFIDENCE] < 0.5
    data.obsm["X_totalVI"] = rng.normal(size=(n, 4)).astype(np.float32)
    if umap:
        data.obsm[ADATA_KEYS.REF_UMAP] = (rng.normal(size=(n, 2)) + np.where(kind == "T cell", 3, -3)[:, None]).astype(
            np.float32
        )
    if proteins:
        t = kind == "T cell"
        values = rng.gamma(2.0, 5.0, (n, len(PROTEINS)))
        values[:, PROTEINS.index("CD3")] += np.where(t, 400, 0)
        values[:, PROTEINS.index("CD19")] += np.where(t, 0, 300)
        values[:, PROTEINS.index("IgG1")] = rng.choice([0.0, 5000.0], n)  # varies most: excluded all the same
        data.obsm["denoised_protein"] = pd.DataFrame(values, index=data.obs_names, columns=PROTEINS)
    data.uns["fedarches"] = {"bundle_id": "toy", "backend": "totalvi", "params": {"seed": 0}}


def _write(data: ad.AnnData | md.MuData, path: Path) -> Path:
    if isinstance(data, md.MuData):
        data.write_h5mu(path)
    else:
        data.write_h5ad(path)
    return path


@pytest.fixture
def toy_bundle(tmp_path: Path, toy_contents, keys) -> ReferenceBundle:
    path = write_bundle(tmp_path / "bundle", toy_contents, crypto.load_private_key(keys[0]))
    return ReferenceBundle.open(path, keys[1])


def _result():
    from fedarches.client.mapping import MappingResult
    from fedarches.shared.adapters import Adapter, TensorSlice
    from fedarches.shared.labels import LabelStatistics

    slice_ = TensorSlice(np.ones((4, 1), dtype=np.float32), axis=1, offset=2)
    adapter = Adapter("toy", ("query",), {"z_encoder.encoder.fc_layers.Layer 0.0.weight": slice_})
    return MappingResult(adapter, LabelStatistics(min_count=11, types=()), "X_totalVI", {}, 1)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- reading ---------------------------------------------------------------------------------


def test_read_query_reads_h5mu_as_mudata_and_h5ad_as_anndata(tmp_path: Path) -> None:
    mdata = _mudata()
    read = read_query(_write(mdata, tmp_path / "cite.h5mu"))
    assert isinstance(read, md.MuData) and list(read.mod) == ["rna", "prot"]
    rna = rna_modality(read)
    assert rna is read.mod["rna"] and rna.shape == (60, 30)
    np.testing.assert_array_equal(rna.layers["counts"].toarray(), mdata.mod["rna"].layers["counts"].toarray())
    np.testing.assert_array_equal(read.mod["prot"].X, mdata.mod["prot"].X)
    assert list(read.mod["prot"].var_names) == PROTEINS

    adata = read_query(_write(mdata.mod["rna"].copy(), tmp_path / "rna.h5ad"))
    assert isinstance(adata, ad.AnnData) and rna_modality(adata) is adata
    assert isinstance(read_query(_write(mdata, tmp_path / "UPPER.H5MU")), md.MuData)  # the suffix in any case


def test_rna_modality_refuses_a_mudata_without_rna_or_missing_cells(tmp_path: Path) -> None:
    mdata = _mudata()
    with pytest.raises(QueryDataError, match=r"no 'rna' modality \(it has \['prot'\]\)") as info:
        rna_modality(md.MuData({"prot": mdata.mod["prot"]}))
    assert "'rna'" in info.value.hint and "write_h5mu" in info.value.hint
    partial = md.MuData({"rna": mdata.mod["rna"][:50].copy(), "prot": mdata.mod["prot"]})
    with pytest.raises(QueryDataError, match="'rna' modality lacks 10 of its 60 cells"):
        rna_modality(partial)
    rna_only = _mudata(prot=False)  # RNA only: a lab without proteins
    assert rna_modality(rna_only).n_obs == 60


def test_query_obs_finds_a_labs_columns_in_rna_and_on_top(tmp_path: Path) -> None:
    mdata = read_query(_write(_mudata(), tmp_path / "cite.h5mu"))
    _annotate(mdata)
    obs = query_obs(mdata)
    assert {"donor", "batch", ADATA_KEYS.PREDICTION}.issubset(obs.columns)  # a donor policy finds its column
    assert obs.index.equals(mdata.obs_names)
    assert (obs["donor"] == mdata.mod["rna"].obs["donor"]).all()


def test_a_broken_h5mu_is_refused_with_one_clear_error(tmp_path: Path) -> None:
    good = _write(_mudata(), tmp_path / "good.h5mu").read_bytes()
    truncated = tmp_path / "truncated.h5mu"
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "notes.h5mu"
    text.write_text("hello")
    for path in (truncated, text):
        with pytest.raises(QueryDataError, match=r"as \.h5mu .*truncated, corrupted or not MuData") as info:
            read_query(path)
        assert info.value.exit_code == 11 and "mudata" in info.value.hint
    anndata_named_h5mu = _write(_mudata().mod["rna"].copy(), tmp_path / "rna.h5mu")
    with pytest.raises(QueryDataError, match="it holds an AnnData") as info:
        read_query(anndata_named_h5mu)
    assert ".h5ad suffix" in info.value.hint
    mudata_named_h5ad = tmp_path / "cite.h5ad"
    mudata_named_h5ad.write_bytes(good)
    with pytest.raises(QueryDataError, match="it holds a MuData") as info:
        read_query(mudata_named_h5ad)
    assert ".h5mu suffix" in info.value.hint


def test_an_unknown_suffix_is_refused_naming_both_kinds(tmp_path: Path, keys) -> None:
    query = _write(_mudata().mod["rna"].copy(), tmp_path / "cells.h5ad")
    renamed = query.rename(tmp_path / "cells.loom")
    for path in (renamed, tmp_path / "cells"):
        with pytest.raises(QueryDataError, match=r"neither \.h5ad \(AnnData\) nor \.h5mu \(MuData\)") as info:
            query_suffix(path)
        assert "write_h5ad" in info.value.hint and "write_h5mu" in info.value.hint
    with pytest.raises(QueryDataError, match=r"neither \.h5ad"):
        read_query(renamed)
    out = tmp_path / "out.h5ad"
    result = runner.invoke(
        app, ["map", str(renamed), "-r", str(MISSING_BUNDLE), "--trust", str(keys[1]), "-o", str(out)]
    )
    assert result.exit_code == 11, result.output  # before the bundle is opened (that would be 20)
    assert "neither .h5ad" in result.output and "hint:" in result.output and "Traceback" not in result.output
    assert not out.exists()


# ---- --out and the federated layout --------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_name", "out_name", "expected"), [("q.h5mu", "o.h5ad", ".h5mu"), ("q.h5ad", "o.h5mu", ".h5ad")]
)
def test_map_refuses_an_out_of_the_other_kind_before_reading_anything(
    tmp_path: Path, keys, query_name: str, out_name: str, expected: str
) -> None:
    query = tmp_path / query_name
    query.write_text("not read: reading it would fail with exit 11")
    out = tmp_path / out_name
    args = ["map", str(query), "-r", str(MISSING_BUNDLE), "--trust", str(keys[1]), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 14, result.output
    assert f"must end in {expected}" in result.output and f"o{expected}" in result.output, result.output
    assert "hint:" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [query_name]  # no output, no plots directory


def test_the_federated_layout_names_the_annotated_file_by_the_query(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert (
        MappingOutputs.in_directory(out, suffix=query_suffix(tmp_path / "lab.h5mu")).annotated == out / "annotated.h5mu"
    )
    assert (
        MappingOutputs.in_directory(out, suffix=query_suffix(tmp_path / "lab.h5ad")).annotated == out / "annotated.h5ad"
    )
    out.mkdir()
    data = _write(_mudata(), out / "annotated.h5mu")  # the file join would write its annotated copy to
    with pytest.raises(OutputPathError, match=r"annotated\.h5mu.*would replace your input"):
        MappingOutputs.in_directory(out, suffix=query_suffix(data)).check([data], directory_option="--out")


# ---- writing -----------------------------------------------------------------------------------


def test_an_annotated_mudata_is_written_as_h5mu_with_its_plots(tmp_path: Path, toy_bundle) -> None:
    mdata = read_query(_write(_mudata(), tmp_path / "cite.h5mu"))
    _annotate(mdata)
    out = tmp_path / "out"
    outputs = MappingOutputs.in_directory(out, suffix=".h5mu")
    plots = write_mapping_outputs(mdata, _result(), toy_bundle, outputs, confidence_threshold=0.5)
    assert {p.name for p in plots} == {"reference_embedding.png", "confidence_histogram.png", "protein_panels.png"}
    assert all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in plots)
    back = md.read_h5mu(out / "annotated.h5mu")
    assert list(back.mod) == ["rna", "prot"]
    assert (back.obs[ADATA_KEYS.PREDICTION] == mdata.obs[ADATA_KEYS.PREDICTION]).all()
    np.testing.assert_array_equal(back.obsm["X_totalVI"], mdata.obsm["X_totalVI"])
    denoised = back.obsm["denoised_protein"]
    assert isinstance(denoised, pd.DataFrame) and list(denoised.columns) == PROTEINS
    np.testing.assert_allclose(denoised.to_numpy(), mdata.obsm["denoised_protein"].to_numpy())
    assert back.uns["fedarches"]["backend"] == "totalvi"
    assert (out / "adapter.npz").is_file() and (out / "label_statistics.json").is_file()
    assert not list(out.rglob("*partial*"))


def test_a_failing_mudata_write_leaves_the_previous_outputs_and_nothing_else(tmp_path: Path, toy_bundle) -> None:
    out = tmp_path / "out"
    out.mkdir()
    old = out / "annotated.h5mu"
    old.write_bytes(b"the previous round's file")
    mdata = _mudata()
    _annotate(mdata)
    mdata.uns["unwritable"] = object()  # h5py cannot store it: the real writer fails half-way through the file
    outputs = MappingOutputs.in_directory(out, suffix=".h5mu")
    with pytest.raises(Exception, match="No method registered for writing"):
        write_mapping_outputs(mdata, _result(), toy_bundle, outputs, confidence_threshold=0.5)
    assert old.read_bytes() == b"the previous round's file"
    assert sorted(p.name for p in out.rglob("*")) == ["annotated.h5mu"]  # no plots, adapter, statistics, partials


def test_writing_a_mudata_under_an_h5ad_name_is_refused_before_writing(tmp_path: Path, toy_bundle) -> None:
    mdata = _mudata()
    _annotate(mdata)
    outputs = MappingOutputs(tmp_path / "annotated.h5ad", plots_dir=tmp_path / "plots")
    with pytest.raises(OutputPathError, match=r"must end in \.h5mu: the query is a MuData"):
        write_mapping_outputs(mdata, _result(), toy_bundle, outputs, confidence_threshold=0.5)
    assert list(tmp_path.iterdir()) == [toy_bundle.path]


# ---- protein panels ------------------------------------------------------------------------------


def test_informative_proteins_rank_by_variance_and_leave_out_isotype_controls() -> None:
    mdata = _mudata()
    _annotate(mdata)
    chosen = informative_proteins(mdata.obsm["denoised_protein"])
    assert len(chosen) == 6 and chosen[:2] in (["CD3", "CD19"], ["CD19", "CD3"])
    assert not {"IgG1", "IgG2a_control"} & set(chosen)
    flat = pd.DataFrame({"IgG1": [0.0, 9.0], "CD3": [1.0, 1.0]})
    assert informative_proteins(flat) == []  # nothing varies but a control: nothing to plot


@pytest.mark.parametrize("kind", ["mudata", "anndata"])
def test_the_protein_plot_comes_with_denoised_proteins_only(tmp_path: Path, toy_bundle, kind: str) -> None:
    def make(**annotate: bool) -> ad.AnnData | md.MuData:
        data = _mudata() if kind == "mudata" else _mudata().mod["rna"].copy()
        _annotate(data, **annotate)
        return data

    names = {p.name for p in plot_mapping(make(), toy_bundle, tmp_path / "a", confidence_threshold=0.5)}
    assert "protein_panels.png" in names and (tmp_path / "a" / "protein_panels.png").stat().st_size > 10_000
    names = {p.name for p in plot_mapping(make(umap=False), toy_bundle, tmp_path / "b", confidence_threshold=0.5)}
    assert "protein_panels.png" in names  # a box per predicted type instead of the UMAP
    names = {p.name for p in plot_mapping(make(proteins=False), toy_bundle, tmp_path / "c", confidence_threshold=0.5)}
    assert "protein_panels.png" not in names and not (tmp_path / "c" / "protein_panels.png").exists()


# ---- end to end: an RNA-only .h5mu lab file onto a totalVI bundle, through the CLIs and the ClientApp ----------


@pytest.mark.slow
def test_an_rna_only_h5mu_maps_onto_a_totalvi_bundle_in_the_cli_and_the_clientapp(
    tmp_path: Path, demo_dir: Path
) -> None:
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedarches.client.app import map_lab
    from fedarches.client.lab import LabDir
    from fedarches.server.cli import app as server_app
    from fedarches.shared import protocol
    from fedarches.shared._process import free_port

    coord = tmp_path / "coord"
    assert runner.invoke(server_app, ["init", "--dir", str(coord), "--port", str(free_port())]).exit_code == 0
    assert runner.invoke(server_app, ["add-lab", "lab_x", "--dir", str(coord)]).exit_code == 0
    bundle_dir = tmp_path / "bundle"
    build = [
        "build-reference", str(demo_dir / "citeseq_reference.h5ad"), "--batch-key", "batch",
        "--labels-key", "cell_type", "--model", "totalvi", "--n-top-genes", "0", "--n-latent", "8",
        "--max-epochs", "20", "--threads", "1", "--signing-key", str(coord / "keys" / "bundle-signing.key"),
        "--out", str(bundle_dir), "-q",
    ]  # fmt: skip
    result = runner.invoke(server_app, build)
    assert result.exit_code == 0, result.output
    lab_dir = LabDir.open(coord / "exports" / "lab_x")
    bundle = ReferenceBundle.open(bundle_dir, lab_dir.trusted_key)
    lab = ad.read_h5ad(demo_dir / "citeseq_lab.h5ad")
    del lab.obsm["protein_expression"]  # the lab measured RNA only
    query = tmp_path / "lab.h5mu"
    md.MuData({"rna": lab}).write_h5mu(query)
    before = _digest(query)

    out = tmp_path / "lab.annotated.h5mu"  # fedarches-client map
    args = ["map", str(query), "-r", str(bundle_dir), "--trust", str(lab_dir.trusted_key), "-o", str(out)]
    result = runner.invoke(app, [*args, "--max-epochs", "5", "--threads", "1", "-q"])
    assert result.exit_code == 0, result.output
    _check_annotated(out, lab, bundle)
    assert (tmp_path / "lab.annotated_plots" / "protein_panels.png").is_file()

    # the ClientApp's train.map handler, as the lab's SuperNode calls it in a round (the bundle already held)
    lab_dir.store_bundle(bundle.bundle_id, bundle.verified_files())
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 11, 1  # what a ClientApp process has
    request = protocol.MapRequest("r1", bundle.bundle_id, 5, 0, 0.5, min_count=5, max_adapter_bytes=10_000_000)
    message = Message(RecordDict({protocol.ROUND: request.to_record()}), dst_node_id=11, message_type=protocol.MAP)
    node = {"lab-dir": str(lab_dir.root), "data-path": str(query), "out-dir": str(tmp_path / "round"), "threads": 1}
    reply = map_lab(message, Context(run_id=7, node_id=11, node_config=node, state=RecordDict(), run_config={}))
    assert not reply.has_error() and protocol.LAB in reply.content
    _check_annotated(tmp_path / "round" / "annotated.h5mu", lab, bundle)
    assert not (tmp_path / "round" / "annotated.h5ad").exists()
    assert (tmp_path / "round" / "plots" / "protein_panels.png").is_file()
    assert _digest(query) == before


def _check_annotated(path: Path, lab: ad.AnnData, bundle: ReferenceBundle) -> None:
    annotated = read_query(path)
    assert isinstance(annotated, md.MuData) and list(annotated.mod) == ["rna"]
    np.testing.assert_array_equal(annotated.mod["rna"].layers["counts"].toarray(), lab.layers["counts"].toarray())
    assert annotated.obsm["X_totalVI"].shape == (lab.n_obs, 8)
    denoised = annotated.obsm["denoised_protein"]
    assert isinstance(denoised, pd.DataFrame) and list(denoised.columns) == bundle.protein_names
    assert np.isfinite(denoised.to_numpy()).all() and (denoised.to_numpy() >= 0).all()
    assert set(annotated.obs[ADATA_KEYS.PREDICTION].astype(str)) <= {*bundle.label_categories, "Unknown"}
    assert annotated.obs[ADATA_KEYS.CONFIDENCE].between(0, 1).all()
    assert annotated.uns["fedarches"]["backend"] == "totalvi"
    assert annotated.uns["fedarches"]["inputs"]["rna_only"]
