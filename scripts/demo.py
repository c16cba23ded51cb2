"""The demo: a coordinator and three labs on loopback run one federated mapping round.

Everything happens through the command lines a consortium would use, with TLS and node
authentication on: ``fedarches-server init/build-reference/serve/add-lab/run-round`` and
``fedarches-client join``. Each lab maps its own shipped demo file under the default privacy
policy (``fedarches-client policy show``): adapters go to the coordinator, label counts only
inside a SecAgg+ secure sum with differential-privacy noise, every release in the lab's ledger. At the end every process is stopped, and the script
prints where the annotated files, the updated atlas and the report are, and how each lab's
predictions compare with the ground truth shipped in its file (which never left the lab).

SIGTERM, SIGINT or SIGHUP (a time limit, Ctrl-C, a closed terminal) stops every process the demo
started, the SuperLink, SuperNodes, SuperExecs and running ClientApps included, prints one line and
exits with 128 + the signal. So does the death of the process named by ``FEDARCHES_PARENT_PID``
(``make demo`` names make) or, without it, of the demo's parent, even by SIGKILL.

    python scripts/demo.py [OUT_DIR] [--reference-epochs N] [--max-epochs N]
    (make demo: OUT_DIR = demo-output; `make demo DEMO_ARGS="--reference-epochs 5"` for a quick run)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
from sklearn.metrics import accuracy_score, f1_score

from fedarches.shared._process import StopSignals, own_executable, parent_from_env
from fedarches.shared.policy import PrivacyPolicy
from fedarches.testing.loopback import LoopbackFederation

DATA = Path(__file__).resolve().parents[1] / "data" / "demo"
LABS = ("lab_a", "lab_b", "lab_c")


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(out: Path, reference_epochs: int | None = None, max_epochs: int | None = None) -> None:
    if out.exists():
        shutil.rmtree(out)
    start = time.monotonic()
    step(f"coordinator: `fedarches-server init --dir {out}/coordinator` (CA, SuperLink certificate, signing key)")
    n = reference_epochs
    epochs = [] if n is None else ["--max-epochs", str(n), "--scanvi-max-epochs", str(n)]
    with LoopbackFederation(out, threads=1, label="demo") as fed:
        coord = fed.coord
        bundle = out / "reference-bundle"
        step("coordinator: build and sign the reference bundle (scVI -> scANVI on the demo reference)")
        subprocess.run(
            [
                own_executable("fedarches-server"), "build-reference", str(DATA / "reference.h5ad"),
                "--batch-key", "batch", "--labels-key", "cell_type", "--signing-key", str(coord.signing_key),
                "--out", str(bundle), "--quiet", *epochs,
            ],
            check=True,
        )  # fmt: skip
        step("coordinator: `fedarches-server serve` (SuperLink: TLS on, node authentication on, state in a database)")
        print(f"SuperLink ready on {coord.local_address} in {fed.start_coordinator():.1f} s")
        for lab in LABS:
            fed.add_lab(lab, DATA / f"{lab}.h5ad")
        step("labs: `fedarches-server add-lab` registered each lab's key; each lab runs `fedarches-client join`")
        tick = time.monotonic()
        for lab in LABS:  # the three labs start together, as they would on their own machines
            fed.join(lab, wait=False)
        fed.wait_online(list(LABS))
        print(f"{len(LABS)} SuperNodes online after {time.monotonic() - tick:.1f} s (1 torch thread each)")
        for lab in LABS:
            print(f"{lab}: data stays in {DATA / lab}.h5ad")
        step("labs: privacy policy in force (no LAB_DIR/policy.toml, so the defaults; `fedarches-client policy show`)")
        for what, how in PrivacyPolicy.load(fed.labs[LABS[0]].export_dir).summary().items():
            print(f"  {what}: {how}")
        step("coordinator: `fedarches-server run-round` (Flower run; labs map locally, adapters come back)")
        surgery = [] if max_epochs is None else ["--max-epochs", str(max_epochs)]
        report = fed.run_round(bundle, "--min-labs", "3", *surgery, echo=True)
    leftover = fed.running_groups()
    step("all processes stopped" if not leftover else f"process groups still running: {leftover}")
    summarize(out, report, time.monotonic() - start)
    show_privacy(out, report)
    print(f"\ndemo finished in {time.monotonic() - start:.0f} s")
    if leftover:
        sys.exit(1)


def summarize(out: Path, report: dict, total_s: float) -> None:
    header = ("cells", 7), ("accuracy", 10), ("macro-F1", 10), ("low-conf", 10), ("epochs", 8), ("to lab", 11)
    print(f"{'lab':<7}" + "".join(f"{h:>{w}}" for h, w in header) + f"{'from lab':>10}")
    labs = {lab["name"]: lab for lab in report["labs"]}
    for name in LABS:
        annotated = out / "labs" / name / "out" / "annotated.h5ad"
        adata = ad.read_h5ad(annotated)
        truth, pred = adata.obs["cell_type"].astype(str), adata.obs["predicted_cell_type"].astype(str)
        macro_f1 = f1_score(truth, pred, average="macro")
        print(
            f"{name:<7}{adata.n_obs:>7}{accuracy_score(truth, pred):>10.3f}{macro_f1:>10.3f}"
            f"{int(adata.obs['is_low_confidence'].sum()):>10}{labs[name]['n_epochs']:>8}"
            f"{labs[name]['bytes_to_lab']:>11}{labs[name]['bytes_from_lab']:>10}"
        )
    print(
        "(accuracy: against obs['cell_type'], the genotype ground truth in each lab's own file; bytes: Flower payload)"
    )
    round_dir = out / "coordinator" / "rounds" / report["round_id"]
    print(f"\nround {report['round_id']}: {report['status']} in {report['_cli']['wall_s']:.1f} s ({report['message']})")
    for name in LABS:
        lab_out = out / "labs" / name / "out"
        audit = out / "labs" / name / "lab-dir" / "egress" / "audit.jsonl"
        print(f"  {name}: {lab_out / 'annotated.h5ad'}  plots: {lab_out / 'plots'}/  what it sent: {audit}")
    print(f"  updated atlas: {report['atlas']['path']}  (batches: {', '.join(report['atlas']['batches'])})")
    print(f"  consortium report: {round_dir / 'report.html'}  and report.json, composition.png")
    print(f"  logs: {out / 'logs'}/")


def show_privacy(out: Path, report: dict) -> None:
    """What the coordinator learned of composition (the secure sum), and each lab's ledger."""
    step("privacy: the consortium composition the coordinator learned (SecAgg+ sum, DP noise, k-suppressed)")
    consortium = report.get("consortium")
    if consortium is None or consortium["cells"] is None:
        print(f"  no secure sum: {None if consortium is None else consortium['message']}")
    else:
        print(
            f"  over {', '.join(consortium['labs'])}: " + ", ".join(f"{t} {n}" for t, n in consortium["cells"].items())
        )
        print("  per-lab counts: none reached the coordinator (report.json 'labs[].label_statistics' is null)")
    for name in LABS:
        lab_dir = out / "labs" / name / "lab-dir"
        step(f"{name}: `fedarches-client ledger --lab-dir {lab_dir}`")
        subprocess.run([own_executable("fedarches-client"), "ledger", "--lab-dir", str(lab_dir)], check=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fedarches demo: a coordinator and three labs on loopback")
    parser.add_argument("out", nargs="?", default="demo-output", type=Path, help="output directory (replaced)")
    parser.add_argument("--reference-epochs", type=int, help="scVI and scANVI epochs of the reference (quick runs)")
    parser.add_argument("--max-epochs", type=int, help="surgery epochs at each lab (default: automatic)")
    args = parser.parse_args()
    parent = parent_from_env() or (os.getppid() if os.getppid() > 1 else None)
    with StopSignals("demo", parent_pid=parent, adopt=True):
        main(args.out, args.reference_epochs, args.max_epochs)
