"""A real loopback round in which an scPoli atlas learns a cell type from a lab, with no cell leaving it.

The reference lacks one CellBench cell line (H838). Lab ``lab_c`` holds 64 H838 cells and joins with
``--labels-key``; its policy releases prototypes. Lab ``lab_a`` holds only reference types. After one
round the merged atlas knows H838 (its prototype: the sum of lab_c's latents over its count), lab_c's
release is in its ledger and its egress log, and the atlas predicts H838 for lab_c's cells.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from fedarches.client.ledger import Ledger
from fedarches.shared import crypto, protocol
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.testing.loopback import LoopbackFederation

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
NEW_TYPE = "H838"
POLICY = '[dp]\nenabled = false\n\n[release]\ncomposition = "plain"\n\n[prototypes]\nrelease = true\n'


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory):
    """(federation, bundle, report, atlas) after one round."""
    from fedarches.server.reference import ReferenceOptions, build_reference

    work = tmp_path_factory.mktemp("new-types")
    reference = ad.read_h5ad(DEMO / "reference.h5ad")
    reference = reference[reference.obs["cell_type"] != NEW_TYPE].copy()
    options = ReferenceOptions(model="scpoli", n_top_genes=1000, max_epochs=100, progress_bar=False, threads=1)
    contents = build_reference(reference, batch_key="batch", labels_key="cell_type", options=options)
    fed = LoopbackFederation(work, threads=1, env={"PYTHONPATH": str(REPO)})
    try:
        bundle_dir = write_bundle(work / "bundle", contents, crypto.load_private_key(fed.coord.signing_key))
        bundle = ReferenceBundle.open(bundle_dir, fed.coord.signing_public_key)
        fed.start_coordinator()
        for lab in ("lab_c", "lab_a"):
            fed.add_lab(lab, DEMO / f"{lab}.h5ad", labels_key="cell_type")
            (fed.labs[lab].export_dir / "policy.toml").write_text(POLICY)
            fed.join(lab)
        report = fed.run_round(bundle.path, "--max-epochs", "30", "--min-labs", "2")
        atlas = ReferenceBundle.open(report["atlas"]["path"], fed.coord.signing_public_key)
        yield fed, bundle, report, atlas
    finally:
        fed.stop()
    assert not fed.running_groups(), "processes outlived the federation"


def test_the_atlas_learns_the_type_only_the_lab_holding_it_contributed(learned) -> None:
    _fed, bundle, report, atlas = learned
    assert report["status"] == "completed", report["_cli"]["output"]
    assert NEW_TYPE not in bundle.label_categories
    assert atlas.label_categories == [*bundle.label_categories, NEW_TYPE]
    assert atlas.setup["lineage"][-1]["new_cell_types"] == {NEW_TYPE: {"labs": ["lab_c"], "cells": 64.0}}
    labs = {lab["name"]: lab for lab in report["labs"]}
    assert labs["lab_c"]["new_types"] == {NEW_TYPE: 64.0}
    assert labs["lab_a"]["new_types"] is None  # its types are all in the atlas: nothing to contribute
    assert NEW_TYPE in report["message"]


def test_the_prototype_left_through_the_egress_audit_and_is_in_the_labs_ledger(learned) -> None:
    fed, _bundle, _report, _atlas = learned
    lab_dir = fed.labs["lab_c"].export_dir
    sent = [json.loads(line) for line in (lab_dir / "egress" / "audit.jsonl").open()]
    maps = [e for e in sent if e["message_type"] == protocol.MAP]
    assert maps and all(e["verdict"] == "sent" for e in maps)
    assert protocol.NEW_TYPES in maps[-1]["records"] and protocol.NEW_TYPES_META in maps[-1]["records"]
    with np.load(Path(maps[-1]["copy"]), allow_pickle=False) as arrays:  # only a sum and a count, no cells
        shapes = {k: arrays[k].shape for k in arrays.files if k.startswith(protocol.NEW_TYPES + "/")}
    assert shapes == {f"{protocol.NEW_TYPES}/sums": (1, 10), f"{protocol.NEW_TYPES}/counts": (1,)}
    entry = next(e for e in Ledger.for_lab(lab_dir).entries() if e.kind == "map-reply")
    assert json.loads(entry.payload)["new_type_prototypes"]["names"] == [NEW_TYPE]
    other = [json.loads(line) for line in (fed.labs["lab_a"].export_dir / "egress" / "audit.jsonl").open()]
    assert all(protocol.NEW_TYPES not in e["records"] for e in other)


def test_the_atlas_predicts_the_new_type_for_the_labs_cells(learned) -> None:
    from fedarches.client.mapping import MappingOptions, map_query

    _fed, _bundle, _report, atlas = learned
    lab = ad.read_h5ad(DEMO / "lab_c.h5ad")
    options = MappingOptions(max_epochs=30, progress_bar=False, threads=1)
    mapped = map_query(lab, atlas, lab_name="lab_c_again", options=options, copy=True).adata
    predicted = mapped.obs["predicted_cell_type"].astype(str).to_numpy()
    is_new = (lab.obs["cell_type"] == NEW_TYPE).to_numpy()
    assert (predicted[is_new] == NEW_TYPE).mean() > 0.8
    assert (predicted[~is_new] == NEW_TYPE).mean() < 0.1
