"""Membership inference against the adapters a lab releases (LiRA, leave-one-model-out); `make privacy-eval`.

Question: given a lab's released adapter (the new batch columns scArches surgery trains, see
``fedarches.shared.adapters``) and the public reference bundle, can an attacker tell whether a given
cell was in the lab's data? This script measures it with the likelihood-ratio attack (LiRA) of
Carlini et al., "Membership Inference Attacks From First Principles" (IEEE S&P 2022), in its
efficient leave-one-model-out evaluation:

1. Pool: the cells of one demo lab (``data/demo/lab_c.h5ad`` by default). A SCANVI reference is
   built from ``data/demo/reference.h5ad`` with ``fedarches.server.reference.build_reference`` and
   signed as a bundle, as the coordinator would.
2. N models (``--n-models``, default 16), each trained on its own seeded random half of the pool,
   so every cell is IN for about half of the models, independently across models. Model m is
   ``fedarches.client.mapping.map_query`` on its IN cells with the federation's default round
   settings (``max_epochs`` = ``ROUND_DEFAULTS['max-epochs']``, 0 meaning automatic, seed
   ``--seed`` + m, 1 torch thread). Its adapter is what the lab would release. scvi-tools holds out
   10 % of a model's IN cells for validation; they still count as IN (they are in the lab's
   data); the JSON also reports the AUC with those cells left out of the evaluation.
3. Release settings, all applied to the same trained adapters (noise is post-processing, so only
   the noise is drawn again): ``as trained`` (the default policy: no clipping, no noise);
   ``clip only`` at C = the median L2 norm of the trained adapters (3 significant digits); and
   clipping at C plus Gaussian noise for each ``--noise-multipliers`` value, through the lab's own
   release path (``fedarches.client.release.noised_adapter`` -> ``fedarches.shared.dp.release_adapter``,
   OpenDP's sampler, fresh noise per model). ε is ``adapter_spend`` at δ = 1e-5 with the lab's
   whole dataset as the unit. The attacker knows the mechanism: shadow adapters are noised the same way.
4. Signal: for each released adapter, the query model is rebuilt as ``reference + adapter`` (as
   ``embed_with_adapters`` does) and every pool cell's negative ELBO is computed with scvi-tools'
   ``get_elbo(return_mean=False)`` (SCANVI unlabelled loss: reconstruction + KL terms, one z sample
   per pass). It is averaged over ``--mc-draws`` passes with fixed torch seeds, so every model sees
   the same Monte-Carlo draws (common random numbers).
5. Attack: for target model m and cell i, Gaussians are fitted to i's signal under the other N-1
   models where i was IN and where it was OUT; the score is the log-likelihood ratio at model m's
   signal. "LiRA" fits a per-cell variance; "LiRA-fixed" uses Carlini et al.'s fixed variance (the
   median per-cell sd), which is stronger with few shadow models. "loss" is the uncalibrated
   loss-threshold attack (Yeom et al. 2018). AUC (sklearn ``roc_auc_score``) per target, mean ± sd
   over targets; TPR at 1 % FPR over all (target, cell) pairs pooled, as in Carlini et al.
   Controls: a null control (each cell's signals shuffled across models: AUC must be about 0.5) per
   setting, and a positive control (members' losses lowered by the median between-model sd: the
   attack must catch it) on the default setting.
6. Utility: accuracy of the rebuilt model's predictions (``predict``, as ``map_query`` does) on all
   pool cells against the ``cell_type`` labels (demuxlet calls), mean ± sd over models; also the
   mean negative ELBO, and both for an all-zero adapter as a floor.

Outputs: a table on stdout, ``docs/privacy_membership.json`` (every number and parameter) and
``docs/privacy_membership.png`` (AUC and accuracy per setting); with ``--pbmc`` (pool: the 430 10x 5'
PBMCs of ``data/demo/pbmc_3chem.h5ad``, reference: its 3' v1 + v2 cells) ``privacy_membership_pbmc.*``.
3 to 9 minutes on 2 shared cores (reference build, 16 surgeries, 9 x 16 evaluations); all torch work runs on
1 thread. :mod:`fedarches.bench.report_privacy` renders docs/privacy.md from the JSON.

    python -m fedarches.bench membership [--n-models 16] [--pool lab_c] [--max-epochs 100]
        [--noise-multipliers 0.03 0.1 0.3 0.5 1 2 4] [--mc-draws 16] [--seed 0] [--out-dir docs]
                                                          (make privacy-eval: scripts/eval_membership.py)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from fedarches.bench.bundles import make_bundle
from fedarches.bench.datasets import DEMO_PBMC, DEMO_PBMC_POOL_BATCH
from fedarches.bench.paths import DEMO, ROOT
from fedarches.client.mapping import MappingOptions, _load_query_model, map_query
from fedarches.client.query import prepare_query
from fedarches.client.release import noised_adapter
from fedarches.server.reference import ReferenceOptions
from fedarches.shared import __version__
from fedarches.shared._cli import text_table
from fedarches.shared._io import atomic_path, atomic_write_bytes
from fedarches.shared._training import quiet_training
from fedarches.shared.adapters import Adapter, TensorSlice, apply_adapters
from fedarches.shared.bundle import ReferenceBundle
from fedarches.shared.dp import adapter_spend
from fedarches.shared.policy import AdapterPolicy, PrivacyPolicy

LABELS_KEY = "cell_type"
DELTA = 1e-5
AUC_GOAL = 0.55
FPR_LEVEL = 0.01
THREADS = 1
PBMC_FILE, PBMC_POOL_BATCH = DEMO_PBMC, DEMO_PBMC_POOL_BATCH  # 10x 5' cells against a 3' v1 + v2 reference
REFERENCE_OPTIONS = ReferenceOptions(max_epochs=200, scanvi_max_epochs=20, seed=0, progress_bar=False)


def read_pool(args: argparse.Namespace) -> tuple[ad.AnnData, ad.AnnData, str]:
    """The reference, the pool and the pool's file as the report names it."""
    if args.pbmc:
        data = ad.read_h5ad(DEMO / PBMC_FILE)
        in_pool = (data.obs["batch"].astype(str) == PBMC_POOL_BATCH).to_numpy()
        args.pool = f"pbmc_{PBMC_POOL_BATCH}"
        return data[~in_pool].copy(), data[in_pool].copy(), f"data/demo/{PBMC_FILE} ({PBMC_POOL_BATCH} cells)"
    path = args.data_dir / f"{args.pool}.h5ad"
    name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return ad.read_h5ad(args.data_dir / "reference.h5ad"), ad.read_h5ad(path), name


def membership(n_models: int, n_cells: int, seed: int) -> np.ndarray:
    """(models x cells) IN mask: each model gets its own seeded random half of the pool.

    Models draw independently, so which other models hold a cell says nothing about whether the
    target holds it. (Forcing every cell IN for exactly half of the models would leak: a target's
    members would have one IN shadow fewer than its non-members, which biases the per-cell fits.)
    """
    rng = np.random.default_rng(seed)
    member = np.zeros((n_models, n_cells), dtype=bool)
    for m in range(n_models):
        member[m, rng.choice(n_cells, n_cells // 2, replace=False)] = True
    return member


def adapter_norm(adapter: Adapter) -> float:
    """L2 norm of every value of the adapter."""
    return float(np.sqrt(sum(float(np.sum(t.values.astype(np.float64) ** 2)) for t in adapter.tensors.values())))


def zero_adapter(adapter: Adapter) -> Adapter:
    """``adapter`` with every value zero (the floor: the reference's own batch columns untouched)."""
    tensors = {n: TensorSlice(np.zeros_like(t.values), t.axis, t.offset) for n, t in adapter.tensors.items()}
    return Adapter(adapter.bundle_id, adapter.batch_categories, tensors)


class Evaluator:
    """The pool's query model, rebuilt as ``reference + adapter`` for each released adapter."""

    def __init__(self, pool: ad.AnnData, bundle: ReferenceBundle, lab_name: str, mc_draws: int, workdir: Path) -> None:
        prepared = prepare_query(pool, bundle, batch_prefix=lab_name)
        with quiet_training():
            self.model = _load_query_model(prepared, bundle, workdir)
        self.reference_state = bundle.reference_state()
        self.labels = np.asarray(bundle.label_categories)
        self.truth = pool.obs[LABELS_KEY].astype(str).to_numpy()
        self.mc_draws = mc_draws
        self.batch_categories = tuple(
            str(c) for c in self.model.adata_manager.get_state_registry("batch").categorical_mapping
        )[len(bundle.batch_categories) :]

    def __call__(self, adapter: Adapter) -> tuple[np.ndarray, float]:
        """Per-cell negative ELBO (mean over the MC draws) and prediction accuracy under ``adapter``."""
        if tuple(adapter.batch_categories) != self.batch_categories:
            msg = f"adapter batches {adapter.batch_categories} differ from the pool model's {self.batch_categories}"
            raise ValueError(msg)
        state = apply_adapters(self.reference_state, [adapter])
        module = self.model.module
        module.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        module.eval()
        self.model.is_trained_ = True
        with quiet_training():
            losses = np.zeros(self.truth.shape[0])
            for draw in range(self.mc_draws):
                torch.manual_seed(draw)  # common random numbers: the same z noise under every adapter
                losses -= self.model.get_elbo(return_mean=False, batch_size=128).numpy().astype(np.float64)
            soft = self.model.predict(soft=True)
        predicted = self.labels[soft[list(self.labels)].to_numpy().argmax(axis=1)]
        return losses / self.mc_draws, float(np.mean(predicted == self.truth))


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray | float) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)


def lira_scores(signals: np.ndarray, member: np.ndarray, target: int) -> dict[str, np.ndarray]:
    """Attack scores for every cell of ``target`` (higher = more likely IN), from the other models only."""
    others = np.arange(signals.shape[0]) != target
    s, m = signals[others], member[others]
    x = signals[target]
    n_in, n_out = m.sum(axis=0), (~m).sum(axis=0)
    mean_in = np.where(m, s, 0.0).sum(axis=0) / np.maximum(n_in, 1)
    mean_out = np.where(~m, s, 0.0).sum(axis=0) / np.maximum(n_out, 1)
    var_in = np.where(m, (s - mean_in) ** 2, 0.0).sum(axis=0) / np.maximum(n_in - 1, 1)
    var_out = np.where(~m, (s - mean_out) ** 2, 0.0).sum(axis=0) / np.maximum(n_out - 1, 1)
    # Carlini et al.'s fixed variance: the median per-cell sd, IN and OUT separately
    sd_in_fixed = float(np.median(np.sqrt(var_in[n_in >= 2]))) if (n_in >= 2).any() else 1.0
    sd_out_fixed = float(np.median(np.sqrt(var_out[n_out >= 2]))) if (n_out >= 2).any() else 1.0
    floor_in, floor_out = max(sd_in_fixed, 1e-12) * 1e-2, max(sd_out_fixed, 1e-12) * 1e-2
    sd_in = np.where(n_in >= 2, np.maximum(np.sqrt(var_in), floor_in), sd_in_fixed)
    sd_out = np.where(n_out >= 2, np.maximum(np.sqrt(var_out), floor_out), sd_out_fixed)
    usable = (n_in >= 1) & (n_out >= 1)
    lira = np.where(usable, _log_normal(x, mean_in, sd_in) - _log_normal(x, mean_out, sd_out), 0.0)
    fixed = np.where(
        usable,
        _log_normal(x, mean_in, max(sd_in_fixed, 1e-12)) - _log_normal(x, mean_out, max(sd_out_fixed, 1e-12)),
        0.0,
    )
    return {"lira": lira, "lira_fixed": fixed, "loss": -x}


def in_minus_out(signals: np.ndarray, member: np.ndarray) -> dict[str, float]:
    """Per cell, mean signal over models holding it minus over models not holding it; mean and s.e. over cells."""
    n_in, n_out = member.sum(axis=0), (~member).sum(axis=0)
    ok = (n_in > 0) & (n_out > 0)
    diff = (np.where(member, signals, 0.0).sum(axis=0) / np.maximum(n_in, 1)) - (
        np.where(~member, signals, 0.0).sum(axis=0) / np.maximum(n_out, 1)
    )
    diff = diff[ok]
    return {
        "in_minus_out_neg_elbo_mean": float(diff.mean()),
        "in_minus_out_neg_elbo_se": float(diff.std(ddof=1) / np.sqrt(diff.size)),
        "between_model_sd_neg_elbo_median": float(np.median(signals.std(axis=0, ddof=1))),
    }


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, level: float = FPR_LEVEL) -> float:
    """The highest true-positive rate at a false-positive rate of at most ``level``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= level].max())


def attack(signals: np.ndarray, member: np.ndarray, validation: np.ndarray) -> dict[str, Any]:
    """Leave-one-model-out LiRA over every target; AUC per target and pooled TPR at 1 % FPR."""
    out: dict[str, Any] = {}
    per_target: dict[str, list[np.ndarray]] = {}
    for target in range(signals.shape[0]):
        for name, score in lira_scores(signals, member, target).items():
            per_target.setdefault(name, []).append(score)
    labels = member.ravel()
    for name, scores in per_target.items():
        aucs = [float(roc_auc_score(member[t], s)) for t, s in enumerate(scores)]
        # the same, with each target's early-stopping validation cells (IN but never a gradient step) left out
        keep = [~validation[t] for t in range(signals.shape[0])]
        aucs_trained = [
            float(roc_auc_score(member[t][k], s[k])) for t, (s, k) in enumerate(zip(scores, keep, strict=True))
        ]
        pooled = np.concatenate(scores)
        out[name] = {
            "auc_per_target": aucs,
            "auc_mean": float(np.mean(aucs)),
            "auc_sd": float(np.std(aucs, ddof=1)),
            "auc_pooled": float(roc_auc_score(labels, pooled)),
            "tpr_at_1pct_fpr_pooled": tpr_at_fpr(labels, pooled),
            "tpr_at_1pct_fpr_per_target_mean": float(np.mean([tpr_at_fpr(member[t], s) for t, s in enumerate(scores)])),
            "auc_trained_cells_only_mean": float(np.mean(aucs_trained)),
            "auc_trained_cells_only_sd": float(np.std(aucs_trained, ddof=1)),
        }
    return out


def train_models(
    pool: ad.AnnData, bundle: ReferenceBundle, member: np.ndarray, args: argparse.Namespace
) -> tuple[list[Adapter], list[dict[str, Any]], np.ndarray]:
    """One ``map_query`` per model on its IN cells: the adapters, what each run measured, the validation cells."""
    adapters, facts = [], []
    validation = np.zeros_like(member)
    for m in range(member.shape[0]):
        index = np.flatnonzero(member[m])
        options = MappingOptions(max_epochs=args.max_epochs, seed=args.seed + m, threads=THREADS, progress_bar=False)
        tick = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # Lightning's early-stopping chatter
            result = map_query(pool[index].copy(), bundle, lab_name=args.pool, options=options)
        seconds = time.perf_counter() - tick
        validation[m, index[np.asarray(result.model.validation_indices_, dtype=int)]] = True
        adapters.append(result.adapter)
        facts.append(
            {
                "model": m,
                "seed": args.seed + m,
                "n_in": int(index.size),
                "n_validation": int(validation[m].sum()),
                "n_epochs": int(result.n_epochs),
                "adapter_norm": adapter_norm(result.adapter),
                "train_s": round(seconds, 2),
            }
        )
        f = facts[-1]
        print(
            f"  model {m + 1:2d}/{member.shape[0]}: {f['n_in']} cells IN ({f['n_validation']} for early stopping), "
            f"{f['n_epochs']} epochs, |adapter| {f['adapter_norm']:.3f}, {seconds:.1f} s",
            flush=True,
        )
    return adapters, facts, validation


def settings(clip: float, multipliers: list[float]) -> list[dict[str, Any]]:
    """The release settings: as trained, clipped at ``clip``, clipped and noised at each multiplier."""
    rows = [
        {"setting": "as trained (default policy)", "policy": AdapterPolicy(delta=DELTA)},
        {"setting": "clip only", "policy": AdapterPolicy(clip_norm=clip, delta=DELTA)},
    ]
    rows += [
        {"setting": "clip + noise", "policy": AdapterPolicy(clip_norm=clip, noise_multiplier=s, delta=DELTA)}
        for s in multipliers
    ]
    return rows


def plot(results: list[dict[str, Any]], zero: dict[str, float], meta: dict[str, Any], path: Path) -> None:
    """Attack AUC and accuracy per release setting, to ``path`` (PNG)."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(results))
    ticks = []
    for r in results:
        if r["noise_multiplier"] == 0:
            ticks.append("as trained\nε=∞" if r["clip_norm"] == 0 else f"clip only\nC={r['clip_norm']:g}, ε=∞")
        else:
            ticks.append(f"σ={r['noise_multiplier']:g}\nε={r['epsilon']:.3g}")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True, height_ratios=[3, 2])
    styles = {"lira": ("LiRA (per-cell variance)", "o", "C0"), "lira_fixed": ("LiRA (fixed variance)", "s", "C1"),
              "loss": ("loss threshold", "^", "C2")}  # fmt: skip
    for offset, (name, (label, marker, color)) in zip((-0.12, 0.0, 0.12), styles.items(), strict=True):
        means = [r["attack"][name]["auc_mean"] for r in results]
        sds = [r["attack"][name]["auc_sd"] for r in results]
        top.errorbar(x + offset, means, yerr=sds, marker=marker, color=color, capsize=3, linestyle="-", label=label)
    top.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
    top.axhline(AUC_GOAL, color="red", linestyle=":", linewidth=1.2, label=f"goal (AUC ≤ {AUC_GOAL})")
    top.set_ylabel("membership AUC (mean ± sd over targets)")
    top.set_title(
        f"Membership inference on released adapters: pool {meta['pool']} ({meta['n_cells']} cells), "
        f"{meta['n_models']} models, ε at δ={DELTA:g} (dataset unit)",
        fontsize=10,
    )
    lows = [r["attack"][n]["auc_mean"] - r["attack"][n]["auc_sd"] for r in results for n in styles]
    highs = [r["attack"][n]["auc_mean"] + r["attack"][n]["auc_sd"] for r in results for n in styles]
    top.set_ylim(min(0.4, min(lows) - 0.02), max(0.7, max(highs) + 0.12))
    top.legend(fontsize=8, loc="upper right", ncol=3)
    top.grid(axis="y", alpha=0.3)
    acc = [r["accuracy_mean"] for r in results]
    acc_sd = [r["accuracy_sd"] for r in results]
    bottom.errorbar(x, acc, yerr=acc_sd, marker="o", color="C3", capsize=3, label="accuracy, released adapter")
    bottom.axhline(zero["accuracy"], color="grey", linestyle="--", linewidth=1, label="accuracy, all-zero adapter")
    bottom.set_ylabel("cell-type accuracy\n(all pool cells)")
    bottom.set_ylim(min(0.0, min(acc) - 0.05), 1.02)
    bottom.legend(fontsize=8, loc="lower left")
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_xticks(x, ticks, fontsize=8)
    bottom.set_xlabel("adapter release setting (noise multiplier σ; noise sd = σ·C)")
    fig.tight_layout()
    with atomic_path(path, mode=0o644) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace, command: str) -> None:
    """The whole evaluation with the command line's ``args``; ``command`` is how it was run, for the report.

    Writes ``OUT_DIR/privacy_membership.json`` and ``.png`` (``--pbmc``: ``privacy_membership_pbmc.*``).
    """
    start = time.monotonic()
    torch.set_num_threads(THREADS)
    reference, pool, pool_file = read_pool(args)
    n_models, n_cells = args.n_models, pool.n_obs
    print(
        f"pool {args.pool}: {n_cells} cells; reference {reference.n_obs} cells; {n_models} models, "
        f"max {args.max_epochs} epochs; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tick = time.perf_counter()
        bundle = make_bundle(reference, work, REFERENCE_OPTIONS, labels_key=LABELS_KEY)
        build_s = time.perf_counter() - tick
        print(f"reference bundle built in {build_s:.1f} s", flush=True)
        member = membership(n_models, n_cells, args.seed)
        tick = time.perf_counter()
        adapters, facts, validation = train_models(pool, bundle, member, args)
        train_s = time.perf_counter() - tick
        norms = np.array([f["adapter_norm"] for f in facts])
        clip = float(f"{np.median(norms):.3g}")
        evaluator = Evaluator(pool, bundle, args.pool, args.mc_draws, work / "pool-model")
        tick = time.perf_counter()
        zero_loss, zero_acc = evaluator(zero_adapter(adapters[0]))
        zero = {"accuracy": zero_acc, "neg_elbo_mean": float(zero_loss.mean())}
        results = []
        null_rng = np.random.default_rng(args.seed)
        for row in settings(clip, args.noise_multipliers):
            policy: AdapterPolicy = row["policy"]
            signals = np.zeros((n_models, n_cells))
            accuracy = np.zeros(n_models)
            released_norms = np.zeros(n_models)
            for m, adapter in enumerate(adapters):
                released, _ = noised_adapter(adapter, PrivacyPolicy(adapters=policy))
                released_norms[m] = adapter_norm(released)
                signals[m], accuracy[m] = evaluator(released)
            spend = adapter_spend(policy)
            result = {
                "setting": row["setting"],
                "clip_norm": policy.clip_norm,
                "noise_multiplier": policy.noise_multiplier,
                "noise_sd": policy.noise_multiplier * policy.clip_norm,
                "epsilon": spend.epsilon if spend.mechanism == "gaussian" else None,
                "delta": spend.delta if spend.mechanism == "gaussian" else None,
                "released_norm_mean": float(released_norms.mean()),
                "attack": attack(signals, member, validation),
                # null control: each cell's signals shuffled across models, so AUC should be 0.5 up to noise
                "null_control_auc_mean": {
                    k: v["auc_mean"] for k, v in attack(null_rng.permuted(signals, axis=0), member, validation).items()
                },
                "accuracy_per_model": accuracy.tolist(),
                "accuracy_mean": float(accuracy.mean()),
                "accuracy_sd": float(accuracy.std(ddof=1)),
                "neg_elbo_mean": float(signals.mean()),
                **in_minus_out(signals, member),
            }
            if not results:  # positive control: members' losses lowered by one typical sd must be caught
                shift = float(np.median(signals.std(axis=0, ddof=1)))
                shifted = attack(signals - shift * member, member, validation)
                result["positive_control"] = {
                    "shift": shift,
                    "auc_mean": {k: v["auc_mean"] for k, v in shifted.items()},
                }
            results.append(result)
            a = result["attack"]
            print(
                f"  {row['setting']:<28s} σ={policy.noise_multiplier:<5g} LiRA AUC {a['lira']['auc_mean']:.3f} "
                f"fixed {a['lira_fixed']['auc_mean']:.3f} loss {a['loss']['auc_mean']:.3f}; "
                f"accuracy {result['accuracy_mean']:.3f}",
                flush=True,
            )
        eval_s = time.perf_counter() - tick

    header = ["setting", "σ", "C", "ε (δ=1e-5)", "AUC LiRA", "AUC LiRA-fixed", "AUC loss",
              "TPR@1%FPR LiRA", "TPR@1%FPR fixed", "accuracy", "-ELBO"]  # fmt: skip
    rows = []
    for r in results:
        a = r["attack"]
        rows.append(
            [
                r["setting"],
                f"{r['noise_multiplier']:g}",
                f"{r['clip_norm']:g}" if r["clip_norm"] else "-",
                f"{r['epsilon']:.3g}" if r["epsilon"] is not None else "∞ (no noise)",
                f"{a['lira']['auc_mean']:.3f} ± {a['lira']['auc_sd']:.3f}",
                f"{a['lira_fixed']['auc_mean']:.3f} ± {a['lira_fixed']['auc_sd']:.3f}",
                f"{a['loss']['auc_mean']:.3f} ± {a['loss']['auc_sd']:.3f}",
                f"{a['lira']['tpr_at_1pct_fpr_pooled']:.3f}",
                f"{a['lira_fixed']['tpr_at_1pct_fpr_pooled']:.3f}",
                f"{r['accuracy_mean']:.3f} ± {r['accuracy_sd']:.3f}",
                f"{r['neg_elbo_mean']:.1f}",
            ]
        )
    print()
    print(text_table(header, rows))
    default = results[0]["attack"]
    worst = max(default[k]["auc_mean"] for k in ("lira", "lira_fixed", "loss"))
    verdict = "met" if worst <= AUC_GOAL else "NOT met"
    print(
        f"\nall-zero adapter: accuracy {zero['accuracy']:.3f}, -ELBO {zero['neg_elbo_mean']:.1f}. "
        f"Default policy (as trained): strongest attack AUC {worst:.3f}, goal AUC ≤ {AUC_GOAL} {verdict}."
    )
    first = results[0]
    null, positive = first["null_control_auc_mean"], first["positive_control"]
    print(
        f"controls (as trained): signals shuffled across models -> AUC LiRA {null['lira']:.3f}, "
        f"fixed {null['lira_fixed']:.3f}; members' loss lowered by {positive['shift']:.2f} (median between-model sd) "
        f"-> AUC LiRA {positive['auc_mean']['lira']:.3f}, fixed {positive['auc_mean']['lira_fixed']:.3f}. "
        f"Per-cell loss IN - OUT: {first['in_minus_out_neg_elbo_mean']:+.3f} "
        f"± {first['in_minus_out_neg_elbo_se']:.3f} (s.e.)."
    )
    print(
        f"TPR@1%FPR pooled over {n_models} targets x {n_cells} cells; C = median trained adapter norm "
        f"({np.median(norms):.4f}) to 3 significant digits."
    )

    meta = {
        "pool": args.pool,
        "n_cells": n_cells,
        "n_models": n_models,
    }
    report = {
        "generated_by": "fedarches.bench.membership",
        "command": command,
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "method": (
            "LiRA (Carlini et al. 2022), leave-one-model-out: per target model, Gaussians per cell fitted to the "
            "other models' signals (IN vs OUT); score = log-likelihood ratio; signal = per-cell negative ELBO of "
            "the query model rebuilt from the released adapter (mean over MC draws with common random numbers)"
        ),
        "parameters": {
            "pool": {
                "file": pool_file,
                "n_cells": n_cells,
                "n_genes": pool.n_vars,
                "batches": sorted(pool.obs["batch"].astype(str).unique().tolist()),
                "cell_types": {str(k): int(v) for k, v in pool.obs[LABELS_KEY].value_counts().items()},
            },
            "reference": {
                "file": f"the other chemistries of {pool_file}" if args.pbmc else "reference.h5ad in the same folder",
                "n_cells": reference.n_obs,
                "options": {k: getattr(REFERENCE_OPTIONS, k) for k in REFERENCE_OPTIONS.__dataclass_fields__},
                "bundle_id": bundle.bundle_id,
                "build_s": round(build_s, 1),
            },
            "n_models": n_models,
            "membership_design": "each model: its own seeded random half of the pool (n_cells // 2 cells)",
            "mapping": {
                "max_epochs": args.max_epochs,
                "early_stopping": MappingOptions().early_stopping,
                "learning_rate": MappingOptions().learning_rate,
                "batch_size": MappingOptions().batch_size,
                "train_size": "scvi-tools default 0.9 (10 % of IN cells for early stopping)",
                "seeds": f"{args.seed} + model index",
                "torch_threads": THREADS,
            },
            "seed": args.seed,
            "mc_draws": args.mc_draws,
            "clip_norm": clip,
            "clip_rule": "median L2 norm of the trained adapters, 3 significant digits",
            "noise_multipliers": list(args.noise_multipliers),
            "delta": DELTA,
            "epsilon_unit": "the lab's whole dataset (adapter_spend)",
            "noise_sampler": "OpenDP make_gaussian via fedarches release path (not seedable)",
            "fpr_level": FPR_LEVEL,
            "auc_goal_default_policy": AUC_GOAL,
        },
        "versions": {
            "fedarches": __version__,
            "python": platform.python_version(),
            **{p: version(p) for p in ("scvi-tools", "torch", "opendp", "numpy", "scikit-learn", "anndata")},
        },
        "models": facts,
        "adapter_n_values": adapters[0].n_values,
        "adapter_norm_median": float(np.median(norms)),
        "membership_matrix": member.astype(int).tolist(),
        "zero_adapter": zero,
        "results": results,
        "default_policy_goal": {"strongest_attack_auc": worst, "goal": AUC_GOAL, "met": worst <= AUC_GOAL},
        "timings_s": {
            "reference_build": round(build_s, 1),
            "training": round(train_s, 1),
            "evaluation": round(eval_s, 1),
            "wall": round(time.monotonic() - start, 1),
        },
    }
    stem = "privacy_membership_pbmc" if args.pbmc else "privacy_membership"
    json_path, png_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.png"
    atomic_write_bytes(json_path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    plot(results, zero, meta, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    print(f"wall time {(time.monotonic() - start) / 60:.1f} min ({time.monotonic() - start:.0f} s)")
