"""docs/privacy.md from the privacy evaluations' JSON (no hand-typed numbers).

    python -m fedarches.bench privacy-doc      (last step of make privacy-eval: scripts/privacy_doc.py)

Reads docs/privacy_utility.json (:mod:`fedarches.bench.privacy_utility`) and docs/privacy_membership.json and
docs/privacy_membership_pbmc.json (:mod:`fedarches.bench.membership`, the second with --pbmc).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedarches.bench.paths import DOCS
from fedarches.shared._io import atomic_write_bytes


def utility_section(data: dict[str, Any]) -> str:
    """The section on composition error against ε (``privacy_utility.json``)."""
    eps = sorted({r["epsilon"] for r in data["rows"] if r["epsilon"] is not None})
    by = {(r["mode"], r["epsilon"]): r for r in data["rows"]}
    header = "| ε per release | " + " | ".join(f"{e:g}" for e in eps) + " | no noise |\n"
    header += "|---" * (len(eps) + 2) + "|\n"
    rows = ""
    for mode in ("secure-sum", "plain"):
        cells = [f"{by[(mode, e)]['tv_mean']:.4f} ({by[(mode, e)]['count_mae']:.1f})" for e in [*eps, None]]
        rows += f"| {mode} | " + " | ".join(cells) + " |\n"
    labs = ", ".join(f"{name} ({n} cells)" for name, n in data["labs"].items())
    return f"""## Utility: consortium composition against ε

Five labs, one per batch of `{data["data"]}`: {labs}. Each lab's count vector is its cell-line
counts, which is what its mapping predicts (mapping accuracy on these labs: docs/benchmarks.md);
{data["mechanism"]}; k = {data["k"]}. Each point
runs the real release code {data["rows"][0]["draws"]} times. Cells: mean total-variation distance
between the composition the coordinator ends up with and the true one (mean absolute error of the
per-type consortium count in brackets). `secure-sum`: every lab's noised vector enters the SecAgg+
sum; `plain`: every lab releases noised, suppressed counts and the coordinator adds what it got.

{header}{rows}
![composition error against ε](privacy_utility.png)

At the default ε = 1 per release the consortium composition is within about 1 % (TV distance) of
the truth. Computed in {data["wall_s"]} s by `scripts/eval_privacy_utility.py`.
"""


def membership_section(data: dict[str, Any], tissue: str) -> str:
    """The section on membership inference for one pool (``privacy_membership*.json``)."""
    lines = [
        "| setting | noise multiplier | ε (δ = 1e-5, dataset unit) | LiRA AUC | LiRA AUC, fixed variance | "
        "TPR at 1 % FPR | accuracy | −ELBO |",
        "|---" * 8 + "|",
    ]
    for r in data["results"]:
        attack = r["attack"]
        eps = r["epsilon"]
        lines.append(
            f"| {r['setting']} | {r['noise_multiplier']:g} | {'∞ (no noise)' if eps is None else f'{eps:.3g}'} | "
            f"{attack['lira']['auc_mean']:.3f} ± {attack['lira']['auc_sd']:.3f} | "
            f"{attack['lira_fixed']['auc_mean']:.3f} ± {attack['lira_fixed']['auc_sd']:.3f} | "
            f"{attack['lira']['tpr_at_1pct_fpr_pooled']:.3f} | {r['accuracy_mean']:.3f} | {r['neg_elbo_mean']:.1f} |"
        )
    goal = data["default_policy_goal"]
    base = data["results"][0]
    costly = [r for r in data["results"] if r["accuracy_mean"] < base["accuracy_mean"] - 0.05]
    cost = (
        f"noise multiplier ≥ {costly[0]['noise_multiplier']:g} (ε ≤ {costly[0]['epsilon']:.3g}) costs accuracy "
        f"({costly[0]['accuracy_mean']:.3f} against {base['accuracy_mean']:.3f} as trained)"
        if costly
        else "no noise level tried costs more than 0.05 accuracy"
    )
    pool = data["parameters"]["pool"]
    verdict = "met" if goal["met"] else "missed"
    zero = data["zero_adapter"]["accuracy"]
    why = "the cell lines are easy" if "cell lines" in tissue else "surgery barely moves the predictions here"
    easy = (
        f"An all-zero adapter scores accuracy {zero:.3f} on this pool: {why}, and −ELBO is the sensitive utility "
        "measure."
        if zero >= base["accuracy_mean"] - 0.01
        else f"An all-zero adapter scores accuracy {zero:.3f} on this pool "
        f"(the trained one {base['accuracy_mean']:.3f})."
    )
    return f"""## Membership inference on adapters: {tissue}

Can a coordinator tell from a lab's released adapter whether a given cell was in the lab's data?
{data["method"]}.

Pool: `{pool["file"]}` ({pool["n_cells"]} cells); {len(data["models"])} adapters, each trained with the
federation's default surgery settings on its own random half of the pool; the attacker knows the
release mechanism (its shadow adapters are clipped and noised the same way).

{chr(10).join(lines)}

Default policy (adapter released as trained): strongest attack AUC {goal["strongest_attack_auc"]:.3f}, goal
≤ {goal["goal"]} {verdict}. The adapter is 640 values shared by every cell of the lab; a member's
loss is only slightly lower than a non-member's, well inside the spread between models, so the attack
stays near chance with or without noise. Noise that gives a meaningful ε for the whole dataset
costs utility: {cost}. That is
why the default releases adapters as trained and keeps clipping plus noise as an option: the
measured leakage does not justify the cost here. {easy} OpenDP's noise cannot be seeded, so noisy rows move
by about ±0.03 between runs.

![attack AUC against noise](privacy_membership.png)

Run: `{data["command"]}`, {data["timings_s"]["wall"]:.0f} s wall ({data["date_utc"]}).
"""


def render(docs: Path = DOCS) -> str:
    """The document for the JSON files in ``docs`` (a section per file present)."""
    parts = [
        "# Privacy evaluation\n\nGenerated by `make privacy-eval` (scripts/privacy_doc.py); do not edit by hand.\n"
    ]
    utility = docs / "privacy_utility.json"
    if utility.is_file():
        parts.append(utility_section(json.loads(utility.read_text())))
    for stem, tissue in (("privacy_membership_pbmc", "PBMC (real tissue)"), ("privacy_membership", "cell lines")):
        membership = docs / f"{stem}.json"
        if membership.is_file():
            parts.append(
                membership_section(json.loads(membership.read_text()), tissue).replace(
                    "privacy_membership.png", f"{stem}.png"
                )
            )
    return "\n".join(parts)


def write_doc(docs: Path = DOCS) -> Path:
    """Write ``docs/privacy.md`` from the JSON files beside it; its path."""
    path = docs / "privacy.md"
    atomic_write_bytes(path, render(docs).encode())
    print(f"wrote {path}")
    return path
