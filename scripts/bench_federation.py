"""Federated round vs the same three mappings run centrally in one process, on the full CellBench data.

Split (as in scripts/compare_scvi.py): reference = CEL-seq2 5-line plates p1 + p2 (all genes of
../shared/data/cellbench_lung_celllines.h5ad, 2,000 HVGs in the model); lab_a = dropseq_3cl,
lab_b = celseq2_3cl, lab_c = celseq2_5cl_p3, each written to its own .h5ad.

Measured in one run, on this machine:
* federated: a SuperLink and three SuperNodes on loopback (TLS and node authentication on), each
  lab with 1 torch thread; start-up times; two rounds (the first sends the bundle, the second only
  its id); wall time of `fedarches-server run-round`; Flower payload bytes each way per lab;
* central: the same three mappings, one after another in one process (same bundle, same epochs and
  seed, the same output files written), with 2 torch threads, scvi-tools imported once;
* sizes: bundle, each lab's raw .h5ad, adapters.

    .venv/bin/python scripts/bench_federation.py [OUT_DIR]     (make bench-federation)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from fedarches.client.mapping import MappingOptions, map_query
from fedarches.client.outputs import MappingOutputs, write_mapping_outputs
from fedarches.server.loopback import LoopbackFederation
from fedarches.shared._process import own_executable
from fedarches.shared.bundle import ReferenceBundle

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellbench_lung_celllines.h5ad"
REFERENCE_BATCHES = ("celseq2_5cl_p1", "celseq2_5cl_p2")
LABS = {"lab_a": "dropseq_3cl", "lab_b": "celseq2_3cl", "lab_c": "celseq2_5cl_p3"}
EPOCHS = 100
CENTRAL_THREADS = 2


def write_split(out: Path) -> dict[str, Path]:
    adata = ad.read_h5ad(DATA)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"reference": out / "reference.h5ad"}
    adata[adata.obs["batch"].isin(REFERENCE_BATCHES)].copy().write_h5ad(paths["reference"])
    for lab, batch in LABS.items():
        paths[lab] = out / f"{lab}.h5ad"
        adata[adata.obs["batch"] == batch].copy().write_h5ad(paths[lab])
    return paths


def main(out: Path) -> None:
    out = out.resolve()
    if out.exists():
        shutil.rmtree(out)
    data = write_split(out / "data")
    results: dict = {"labs": {}, "epochs": EPOCHS}
    with LoopbackFederation(out / "federation", threads=1) as fed:
        bundle_dir = out / "reference-bundle"
        tick = time.monotonic()
        subprocess.run(
            [
                own_executable("fedarches-server"), "build-reference", str(data["reference"]),
                "--batch-key", "batch", "--labels-key", "cell_type", "--signing-key", str(fed.coord.signing_key),
                "--out", str(bundle_dir), "--quiet",
            ],
            check=True,
        )  # fmt: skip
        results["reference_build_s"] = time.monotonic() - tick
        results["superlink_startup_s"] = fed.start_coordinator()
        for lab in LABS:
            fed.add_lab(lab, data[lab])
        results["supernode_startup_s"] = {lab: fed.join(lab) for lab in LABS}
        rounds = [fed.run_round(bundle_dir, "--max-epochs", str(EPOCHS), "--min-labs", "3") for _ in range(2)]
        results["lab_timings_round2"] = {lab["name"]: lab["timings"] for lab in rounds[1]["labs"]}
        outputs = {lab: ad.read_h5ad(fed.labs[lab].out_dir / "annotated.h5ad") for lab in LABS}
    bundle = ReferenceBundle.open(bundle_dir, fed.coord.signing_public_key)
    results["bundle_bytes"] = bundle.size_bytes
    results["rounds"] = [
        {"wall_s": r["_cli"]["wall_s"], "phases_s": r["phases_s"], "status": r["status"]} for r in rounds
    ]
    for r_index, report in enumerate(rounds):
        for lab in report["labs"]:
            entry = results["labs"].setdefault(lab["name"], {"raw_h5ad_bytes": data[lab["name"]].stat().st_size})
            entry[f"round{r_index + 1}"] = {
                "bytes_to_lab": lab["bytes_to_lab"],
                "bytes_from_lab": lab["bytes_from_lab"],
                "n_epochs": lab["n_epochs"],
                "reply_s": lab["reply_s"],
                "train_s": lab["timings"].get("train_s"),
            }

    torch.set_num_threads(CENTRAL_THREADS)
    tick = time.monotonic()
    central = {}
    for lab in LABS:
        adata = ad.read_h5ad(data[lab])
        options = MappingOptions(max_epochs=EPOCHS, seed=0, progress_bar=False)
        result = map_query(adata, bundle, lab_name=lab, options=options)
        outputs_dir = MappingOutputs.in_directory(out / "central" / lab)  # the same files a lab writes
        write_mapping_outputs(adata, result, bundle, outputs_dir, confidence_threshold=0.5)
        central[lab] = adata
    results["central_s"] = time.monotonic() - tick
    for lab in LABS:
        fed_pred = outputs[lab].obs["predicted_cell_type"].astype(str).to_numpy()
        cen_pred = central[lab].obs["predicted_cell_type"].astype(str).to_numpy()
        truth = central[lab].obs["cell_type"].astype(str).to_numpy()
        results["labs"][lab].update(
            {
                "n_cells": int(central[lab].n_obs),
                "agreement_with_central": float(np.mean(fed_pred == cen_pred)),
                "accuracy_federated": float(np.mean(fed_pred == truth)),
                "accuracy_central": float(np.mean(cen_pred == truth)),
            }
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print_table(results)


def print_table(r: dict) -> None:
    print(f"\nstart-up: SuperLink {r['superlink_startup_s']:.1f} s; SuperNodes (until online) "
          + ", ".join(f"{k} {v:.1f} s" for k, v in r["supernode_startup_s"].items()))  # fmt: skip
    for i, rnd in enumerate(r["rounds"], 1):
        ratio = rnd["wall_s"] / r["central_s"]
        print(f"round {i}: federated {rnd['wall_s']:.1f} s vs central {r['central_s']:.1f} s -> ratio {ratio:.2f} "
              f"(phases {rnd['phases_s']})")  # fmt: skip
    print(f"bundle: {r['bundle_bytes']} bytes")
    head = f"{'lab':<7}{'cells':>6}{'raw h5ad':>10}{'to lab r1':>11}{'to lab r2':>10}{'from lab':>9}"
    print(head + f"{'epochs':>7}{'acc fed':>8}{'acc cen':>8}{'agree':>7}")
    for lab, v in r["labs"].items():
        print(
            f"{lab:<7}{v['n_cells']:>6}{v['raw_h5ad_bytes']:>10}{v['round1']['bytes_to_lab']:>11}"
            f"{v['round2']['bytes_to_lab']:>10}{v['round1']['bytes_from_lab']:>9}{v['round1']['n_epochs']:>7}"
            f"{v['accuracy_federated']:>8.3f}{v['accuracy_central']:>8.3f}{v['agreement_with_central']:>7.3f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-output/federation"))
