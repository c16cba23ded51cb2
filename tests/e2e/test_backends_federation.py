"""A real loopback round for each non-default backend: an scVI reference (kNN labels), a totalVI
reference (CITE-seq) whose lab brings RNA only, an scPoli reference (prototype labels), an scGen
reference (no surgery: adapters without tensors, correction by the labs' own labels), a trVAE
reference, and an expiMap reference over GO programs (PBMC, two labs of 5' cells; chance 1/9).

Each runs the same command lines users type, with TLS and node authentication, and checks what the
SCANVI federation tests check: the round completes, egress holds only the backend's allow-listed
tensors, each lab's annotations carry the backend's keys and the Unknown call, and the merged atlas
reproduces each lab's latent with no training.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from fedarches.shared import crypto
from fedarches.shared.backends import BACKENDS, get_backend
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.testing.loopback import LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
EPOCHS = 20
PLAIN_POLICY = '[dp]\nenabled = false\n\n[release]\ncomposition = "plain"\n'


def _scvi_setup(work: Path) -> tuple[Path, dict[str, Path], str]:
    """The demo reference and two demo labs."""
    return DEMO / "reference.h5ad", {lab: DEMO / f"{lab}.h5ad" for lab in ("lab_a", "lab_b")}, "cell_type"


def _totalvi_setup(work: Path) -> tuple[Path, dict[str, Path], str]:
    """The CITE-seq demo reference; the lab's proteins removed (an RNA-only lab)."""
    lab = ad.read_h5ad(DEMO / "citeseq_lab.h5ad")
    del lab.obsm["protein_expression"]
    rna_only = work / "citeseq_lab_rna.h5ad"
    lab.write_h5ad(rna_only)
    return DEMO / "citeseq_reference.h5ad", {"lab_rna": rna_only}, "cell_type"


def _expimap_setup(work: Path) -> tuple[Path, dict[str, Path], str]:
    """PBMC: the 3' cells as the reference (gene symbols, for GO programs), the 5' cells as two labs."""
    pbmc = ad.read_h5ad(DEMO / "pbmc_3chem.h5ad")
    reference = work / "pbmc_reference.h5ad"
    pbmc[pbmc.obs["batch"] != "5p"].copy().write_h5ad(reference)
    five = np.flatnonzero((pbmc.obs["batch"] == "5p").to_numpy())
    labs = {}
    for lab, cells in (("lab_5p_a", five[::2]), ("lab_5p_b", five[1::2])):
        labs[lab] = work / f"{lab}.h5ad"
        pbmc[cells].copy().write_h5ad(labs[lab])
    return reference, labs, "cell_type"


SETUPS = {
    "scvi": _scvi_setup,
    "totalvi": _totalvi_setup,
    "scpoli": _scvi_setup,
    "scgen": _scvi_setup,
    "trvae": _scvi_setup,
    "expimap": _expimap_setup,
}
REFERENCE_OPTIONS = {"expimap": {"gene_programs": DEMO / "go_bp_2023_pbmc.gmt", "n_top_genes": 1000}}
# chance: 1/3 (three cell lines per demo lab), 1/5 (marker-gated PBMC types in the CITE-seq lab)
MIN_ACCURACY = {"scvi": 0.8, "totalvi": 0.65, "scpoli": 0.8, "scgen": 0.8, "trvae": 0.8, "expimap": 0.75}


@pytest.fixture(scope="module", params=[name for name in SETUPS if name in BACKENDS])
def backend_round(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(backend name, federation, reference bundle, round report, lab data paths) after one round."""
    from fedarches.server.reference import ReferenceOptions, build_reference

    name = request.param
    work = tmp_path_factory.mktemp(f"fed-{name}")
    reference, labs, labels_key = SETUPS[name](work)
    contents = build_reference(
        ad.read_h5ad(reference),
        batch_key="batch",
        labels_key=labels_key,
        options=ReferenceOptions(
            model=name, max_epochs=100, progress_bar=False, threads=1, **REFERENCE_OPTIONS.get(name, {})
        ),
    )
    fed = LoopbackFederation(work, threads=1, env={"PYTHONPATH": str(REPO)})
    try:
        bundle_dir = write_bundle(work / "bundle", contents, crypto.load_private_key(fed.coord.signing_key))
        bundle = ReferenceBundle.open(bundle_dir, fed.coord.signing_public_key)
        fed.start_coordinator()
        for lab, data in labs.items():
            fed.add_lab(lab, data)
            (fed.labs[lab].export_dir / "policy.toml").write_text(PLAIN_POLICY)
            fed.join(lab)
        report = fed.run_round(bundle.path, "--max-epochs", str(EPOCHS), "--min-labs", str(len(labs)))
        yield name, fed, bundle, report, labs
    finally:
        fed.stop()
    assert not fed.running_groups(), "processes outlived the federation"


def test_round_completes_with_the_backend_recorded(backend_round) -> None:
    name, fed, bundle, report, labs = backend_round
    assert report["status"] == "completed", report["_cli"]["output"]
    assert {lab["name"]: lab["status"] for lab in report["labs"]} == dict.fromkeys(labs, "accepted")
    assert bundle.setup["backend"] == name
    atlas = ReferenceBundle.open(report["atlas"]["path"], fed.coord.signing_public_key)
    assert atlas.setup["backend"] == name and atlas.model_class == bundle.model_class
    assert atlas.protein_names == bundle.protein_names
    assert atlas.batch_categories == [*bundle.batch_categories, *labs]
    html = (Path(report["atlas"]["path"]).parent / "report.html").read_text()
    assert bundle.model_class in html


def test_egress_holds_only_the_backends_allow_listed_tensors(backend_round) -> None:
    import re

    name, _fed, _bundle, report, _labs = backend_round
    patterns = [re.compile(p) for p in get_backend(name).adapter_tensors]
    for lab in report["labs"]:
        tensors = [t["name"] for t in lab["adapter"]["tensors"]]
        assert tensors or not get_backend(name).surgery_trains, lab  # scGen: nothing trains, nothing leaves
        assert all(any(p.fullmatch(t) for p in patterns) for t in tensors), tensors


def test_each_lab_is_annotated_and_the_atlas_reproduces_its_latent(backend_round) -> None:
    from fedarches.client.mapping import embed_with_atlas

    name, fed, bundle, report, labs = backend_round
    backend = get_backend(name)
    atlas = ReferenceBundle.open(report["atlas"]["path"], fed.coord.signing_public_key)
    for lab, data in labs.items():
        annotated = ad.read_h5ad(fed.labs[lab].out_dir / "annotated.h5ad")
        assert annotated.uns["fedarches"]["backend"] == name
        for key in ("predicted_cell_type", "prediction_confidence", "is_unknown", "mapping_score"):
            assert key in annotated.obs, key
        truth = ad.read_h5ad(data).obs["cell_type"]
        labelled = truth.notna().to_numpy()  # the CITE-seq lab's cells that no protein gate labelled are not scored
        predicted = annotated.obs["predicted_cell_type"].astype(str).to_numpy()
        accuracy = float((predicted[labelled] == truth.astype(str).to_numpy()[labelled]).mean())
        assert accuracy > MIN_ACCURACY[name], (lab, accuracy)
        if name == "scpoli":  # scPoli's uncertainty: distance to the nearest prototype
            assert (annotated.obs["prediction_uncertainty"] >= 0).all()
        if bundle.protein_names:
            imputed = annotated.obsm["denoised_protein"]
            assert list(imputed.columns) == bundle.protein_names
            assert np.isfinite(np.asarray(imputed, dtype=float)).all()
        latent = embed_with_atlas(annotated, atlas, lab_name=lab)
        np.testing.assert_allclose(latent, annotated.obsm[backend.latent_key], atol=1e-5)
