"""Figures for the run's HTML report: catalog accounting, resizing, training curves, metrics, predictions."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from zoobot_core.evaluate import vote_fractions
from zoobot_core.fits_images import is_fits, load_fits_rgb
from zoobot_core.image_source import ShardImages
from zoobot_core.images import ImageViewer, ResizeConfig, view_file
from zoobot_core.io import atomic_path
from zoobot_core.schemas import DecisionTree

log = logging.getLogger(__name__)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (rules run without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path | str) -> None:
    """Lay out, write as PNG atomically, and close the figure."""
    plt = pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_accounting(accounting: dict, path: Path | str) -> None:
    """Bars: rows in, ready (labelled / unlabelled), and quarantined by reason."""
    plt = pyplot()
    labels = ["rows in", "ready: labelled", "ready: unlabelled", *(f"quarantined: {r}" for r in accounting["quarantined_by_reason"])]
    values = [accounting["n_in"], accounting["n_labelled"], accounting["n_unlabelled"], *accounting["quarantined_by_reason"].values()]
    colours = ["#555555", "#2a7ab0", "#7fb3d5", *["#c0392b"] * len(accounting["quarantined_by_reason"])]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    bars = ax.barh(labels[::-1], values[::-1], color=colours[::-1])
    ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_xscale("log")  # a handful of quarantined rows stay visible beside hundreds of thousands
    ax.set_xlabel("catalog rows (log scale)")
    ax.set_title(f"Catalog: {accounting['n_in']} in = {accounting['n_ok']} ready + {accounting['n_quarantined']} quarantined", fontsize=10)
    save_figure(fig, path)


def plot_resize_examples(ready: pd.DataFrame, path: Path | str, view: ImageViewer, n: int = 6) -> None:
    """Original images above, below as the model sees them (`view`: resized, FITS stretched), the first n ready galaxies by id."""
    plt = pyplot()
    rows = ready.sort_values("id_str").head(n)
    fig, axes = plt.subplots(2, len(rows), figsize=(1.8 * len(rows), 4.8), squeeze=False)
    for col, (_, row) in enumerate(rows.iterrows()):
        for r in range(2):
            if r:
                image = view(row["file_loc"])
            elif is_fits(row["file_loc"]):  # a FITS original through the configured stretch, at its own size
                image = np.asarray(load_fits_rgb(row["file_loc"], view.config.fits))
            else:
                image = view_file(row["file_loc"])
            axes[r, col].imshow(image)
            size = image.shape[:2][::-1]
            axes[r, col].set_xticks([]), axes[r, col].set_yticks([])
            axes[r, col].set_title(f"{row['id_str']}\noriginal, {size[0]} px" if r == 0 else f"resized, {size[0]} px", fontsize=7)
    fig.suptitle("Before and after resizing", fontsize=10)
    save_figure(fig, path)


def plot_history(history: pd.DataFrame, path: Path | str) -> None:
    """Train and validation loss per epoch, the kept (best) epoch marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history["epoch"], history["loss"], "o-", label="train")
    ax.plot(history["epoch"], history["val_loss"], "o-", label="validation")
    best = history.loc[history["val_loss"].idxmin()]
    ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"kept: epoch {int(best['epoch'])}")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("Dirichlet-Multinomial loss")
    ax.legend(fontsize=8)
    ax.set_title("Training curves", fontsize=10)
    save_figure(fig, path)


def plot_per_question(per_question: pd.DataFrame, path: Path | str) -> None:
    """Per question: vote-fraction MAE of the model beside the constant predictor's."""
    plt = pyplot()
    y = np.arange(len(per_question))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(y) + 1.4))
    ax.barh(y - 0.2, per_question["model_mae"], height=0.4, label="model", color="#2a7ab0")
    ax.barh(y + 0.2, per_question["constant_mae"], height=0.4, label="constant (train mean)", color="#bbbbbb")
    ax.set_yticks(y, per_question["question"], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean absolute error of vote fractions (test split; lower is better)")
    ax.legend(fontsize=8)
    ax.set_title("Per-question error, model vs constant predictor", fontsize=10)
    save_figure(fig, path)


def plot_prediction_examples(
    predictions: pd.DataFrame, test_catalog: pd.DataFrame, image_paths: dict[str, str], tree: DecisionTree, path: Path | str, n: int = 6,
    view: Callable[[str], np.ndarray] = view_file,
) -> None:
    """Test galaxies with the first question's predicted vote fractions (± MC-dropout spread) beside the volunteers'."""
    plt = pyplot()
    question = tree.questions[0]
    cols = [tree.column(question.name, a) for a in question.answers]
    merged = predictions.merge(test_catalog[["id_str", *tree.label_cols]], on="id_str").sort_values("id_str").head(n)
    observed, _ = vote_fractions(merged[tree.label_cols].to_numpy(dtype=float), tree)
    first, last = tree.question_index_groups[0]
    fig, axes = plt.subplots(2, len(merged), figsize=(2.2 * len(merged), 4.6), squeeze=False)
    x = np.arange(len(cols))
    for i, (_, row) in enumerate(merged.iterrows()):
        axes[0, i].imshow(view(image_paths[row["id_str"]]))
        axes[0, i].set_xticks([]), axes[0, i].set_yticks([])
        axes[0, i].set_title(row["id_str"], fontsize=7)
        ax = axes[1, i]
        ax.bar(x - 0.2, [row[f"{c}_fraction"] for c in cols], width=0.4, yerr=[row[f"{c}_fraction_std"] for c in cols], capsize=2, label="model ± spread", color="#2a7ab0")
        ax.bar(x + 0.2, observed[i, first : last + 1], width=0.4, label="volunteers", color="#e67e22")
        ax.set_xticks(x, list(question.answers), rotation=60, fontsize=6, ha="right")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="y", labelsize=6)
    axes[1, 0].set_ylabel(f"{question.name}\nvote fraction", fontsize=7)
    axes[1, -1].legend(fontsize=6)
    fig.suptitle("Test galaxies: predicted vote fractions (MC-dropout mean ± std) vs volunteers", fontsize=10)
    save_figure(fig, path)


def report_figures(
    accounting_path: Path | str,
    quarantine_path: Path | str,
    ready_path: Path | str,
    history_path: Path | str,
    per_question_path: Path | str,
    confident_path: Path | str,
    confusion_path: Path | str,
    predictions_path: Path | str,
    shard_dir: Path | str,
    tree: DecisionTree,
    out: dict[str, Path | str],
    resize: ResizeConfig | None = None,
) -> None:
    """The report_figures rule: every figure of the report, written to out['accounting'], ['resize'],
    ['history'], ['per_question'], ['confusion'], ['predictions'], and the quarantine table as CSV to out['quarantine']."""
    ready = pd.read_parquet(ready_path)
    with atomic_path(out["quarantine"]) as tmp:
        pd.read_parquet(quarantine_path).to_csv(tmp, index=False)
    plot_accounting(json.loads(Path(accounting_path).read_text()), out["accounting"])
    view = ImageViewer(resize or ResizeConfig())
    plot_resize_examples(ready, out["resize"], view)
    plot_history(pd.read_csv(history_path), out["history"])
    plot_per_question(pd.read_csv(per_question_path), out["per_question"])
    plot_confusion(pd.read_csv(confusion_path), pd.read_csv(confident_path), out["confusion"])
    plot_prediction_examples(
        pd.read_parquet(predictions_path), pd.read_parquet(Path(shard_dir) / "test_catalog.parquet"),
        dict(zip(ready["id_str"], ready["file_loc"])), tree, out["predictions"], view=view,
    )
    log.info("Report figures written: %s", ", ".join(str(p) for p in out.values()))


def plot_confusion(confusion: pd.DataFrame, per_question: pd.DataFrame, path: Path | str, columns: int = 4) -> None:
    """One confusion matrix per question (rows: volunteers' confident answer; columns: the model's), row-normalised, counts written in."""
    plt = pyplot()
    questions = list(dict.fromkeys(confusion["question"]))
    n_rows = -(-len(questions) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(3.3 * columns, 3.1 * n_rows), squeeze=False)
    for ax in axes.flat[len(questions):]:
        ax.axis("off")
    for ax, question in zip(axes.flat, questions):
        cells = confusion[confusion["question"] == question]
        answers = list(dict.fromkeys(cells["volunteers"]))
        counts = cells.pivot(index="volunteers", columns="model", values="count").loc[answers, answers].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(counts):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(answers)), answers, rotation=60, ha="right", fontsize=6)
        ax.set_yticks(range(len(answers)), answers, fontsize=6)
        row = per_question.set_index("question").loc[question]
        accuracy = "n/a" if row["n_confident"] == 0 else f"{row['accuracy']:.0%}"
        ax.set_title(f"{question}\n{int(row['n_confident'])} confident, accuracy {accuracy}", fontsize=8)
    fig.supylabel("volunteers' confident answer", fontsize=9)
    fig.supxlabel("model's most likely answer", fontsize=9)
    save_figure(fig, path)


METHOD_STYLE = {  # finetune's methods: colour and label in its figures
    "finetuned": ("#c0392b", "finetuned model"),
    "linear_probe": ("#2a7ab0", "linear probe of the base"),
    "radial_profile": ("#27ae60", "radial profile (rotation-invariant)"),
    "pixels": ("#8e44ad", "pixels"),
    "constant": ("#999999", "constant"),
}


def plot_finetune_roc(cv: pd.DataFrame, metrics: dict, path: Path | str) -> None:
    """Out-of-fold ROC curves of every method (binary), each with its AUC and the operating point of
    its thresholds; multiclass: the finetuned model's one-vs-rest curves; regression: predicted vs true."""
    from sklearn.metrics import roc_curve

    plt = pyplot()
    task = metrics["task"]
    scored = cv[cv["fold"] >= 0]
    fig, ax = plt.subplots(figsize=(5.6, 5))
    if task == "regression":
        for method in ("finetuned", "linear_probe", "radial_profile"):
            colour, label = METHOD_STYLE[method]
            m = metrics["methods"][method]
            ax.scatter(scored["label"], scored[f"{method}_score"], s=12, alpha=0.7, color=colour, label=f"{label}: MAE {m['mae']['pooled']:.3g}, R² {m['r2']['pooled']:.2f}")
        lo, hi = scored["label"].min(), scored["label"].max()
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":")
        ax.set_xlabel(f"{metrics['label']} (true)")
        ax.set_ylabel("predicted out of fold")
    else:
        if task == "binary":
            frozen = metrics["config"]["unfreeze_blocks"] == 0
            for method in [*list(METHOD_STYLE)[1:], "finetuned"]:  # the finetuned model drawn last, on top
                colour, label = METHOD_STYLE[method]
                label = f"pixels ({metrics['config']['pixel_size']} px)" if method == "pixels" else label
                label += " (= the linear probe: frozen base)" if method == "finetuned" and frozen else ""
                fpr, tpr, _ = roc_curve(scored["label"], scored[f"{method}_score"])
                auc = metrics["methods"][method]["roc_auc"]
                ax.plot(fpr, tpr, color=colour, lw=2.2 if method == "finetuned" else 1.2, linestyle="--" if method == "linear_probe" and frozen else "-",
                        label=f"{label}: AUC {auc['pooled']:.2f} ({auc['ci95'][0]:.2f}-{auc['ci95'][1]:.2f})")
                predicted = scored[f"{method}_predicted"].to_numpy()
                truth = scored["label"].to_numpy()
                ax.plot((predicted[truth == 0] == 1).mean(), (predicted[truth == 1] == 1).mean(), "o", color=colour, markersize=6)
        else:
            n_classes = metrics["config"]["n_classes"]
            for k in range(n_classes):
                fpr, tpr, _ = roc_curve(scored["label"] == k, scored[f"finetuned_p{k}"])
                ax.plot(fpr, tpr, label=f"finetuned, class {k} vs rest")
            for method, (_, label) in METHOD_STYLE.items():
                ax.plot([], [], " ", label=f"{label}: macro AUC {metrics['methods'][method]['roc_auc']['pooled']:.2f}")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", lw=1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    title = f"{metrics['label']}: {len(scored)} galaxies scored out of fold ({metrics['n_folds']}-fold CV)"
    ax.set_title(title + ("\ndots: each method at its decision threshold" if task == "binary" else ""), fontsize=9)
    save_figure(fig, path)


def plot_finetune_scores(metrics: dict, path: Path | str) -> None:
    """Every method's out-of-fold scores with bootstrap 95% intervals, and beside each the finetuned model's
    paired difference from it: the table of cv_metrics.csv as a picture."""
    plt = pyplot()
    regression = metrics["task"] == "regression"
    names = ("mae", "r2") if regression else ("balanced_accuracy", "roc_auc")
    methods = list(METHOD_STYLE)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(methods) + 1.6), sharey=True)
    y = np.arange(len(methods))[::-1]
    for ax, name in zip(axes, names):
        for yi, method in zip(y, methods):
            m = metrics["methods"][method][name]
            colour = METHOD_STYLE[method][0]
            ax.errorbar(m["pooled"], yi, xerr=[[m["pooled"] - m["ci95"][0]], [m["ci95"][1] - m["pooled"]]], fmt="o", color=colour, capsize=3)
            diff = metrics["methods"][method].get("finetuned_minus_this", {}).get(name)
            if diff is not None:
                ax.annotate(f"finetuned {diff['difference']:+.2f} ({diff['ci95'][0]:+.2f} to {diff['ci95'][1]:+.2f})", (m["ci95"][1], yi),
                            xytext=(6, 0), textcoords="offset points", va="center", fontsize=7, color="#333333")
        if not regression:
            ax.axvline(0.5, color="grey", linestyle=":", lw=1)
        ax.set_xlabel(f"{name.replace('_', ' ')} (out of fold; lower is better)" if name == "mae" else f"{name.replace('_', ' ').replace('roc auc', 'ROC AUC')} (out of fold)")
        low = min(metrics["methods"][m][name]["ci95"][0] for m in methods)
        high = max(metrics["methods"][m][name]["ci95"][1] for m in methods)
        ax.set_xlim(low - 0.05 * abs(high - low), high + 0.55 * abs(high - low))
    axes[0].set_yticks(y, [METHOD_STYLE[m][1] for m in methods], fontsize=8)
    fig.suptitle(f"{metrics['label']}: {metrics['n_scored']} galaxies, {metrics['n_folds']}-fold CV; bars: bootstrap 95% intervals; "
                 "text: the finetuned model's paired difference", fontsize=9)
    save_figure(fig, path)


def plot_confident_examples(cv: pd.DataFrame, images_of, metrics: dict, path: Path | str, n: int = 8) -> None:
    """The galaxies the finetuned model (out of fold) is surest are positive and surest are negative
    (per class for multiclass; highest and lowest values for regression), framed green when right.
    `images_of(ids)` gives {id: 0-255 RGB image} for the few galaxies shown."""
    plt = pyplot()
    task, label = metrics["task"], metrics["label"]
    scored = cv[cv["fold"] >= 0]
    if task == "multiclass":
        rows = [(f"surest class {k}", scored.nlargest(n, f"finetuned_p{k}"), f"finetuned_p{k}", k) for k in range(metrics["config"]["n_classes"])]
    elif task == "binary":
        rows = [("surest positive", scored.nlargest(n, "finetuned_score"), "finetuned_score", 1),
                ("surest negative", scored.nsmallest(n, "finetuned_score"), "finetuned_score", 0)]
    else:
        rows = [("highest predicted", scored.nlargest(n, "finetuned_score"), "finetuned_score", None),
                ("lowest predicted", scored.nsmallest(n, "finetuned_score"), "finetuned_score", None)]
    shown = images_of(sorted({i for _, part, _, _ in rows for i in part["id_str"].head(n)}))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 2.2 * len(rows) + 0.3), squeeze=False)
    for r, (title, part, column, target) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(part):
                ax.axis("off")
                continue
            row = part.iloc[c]
            ax.imshow(np.asarray(shown[row["id_str"]], np.uint8))
            truth = row["label"]
            text = f"{truth:.3g}" if target is None else f"{label}={int(truth)}"
            ax.set_title(f"{row['id_str'][:16]}\n{column.split('_')[-1]} {row[column]:.2f}, {text}", fontsize=6)
            if target is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor("#27ae60" if int(truth) == target else "#c0392b")
                    spine.set_linewidth(3)
        axes[r, 0].set_ylabel(title, fontsize=8)
    fig.suptitle(f"{label}: the finetuned model's surest out-of-fold calls (green frame: right, red: wrong)", fontsize=9)
    save_figure(fig, path)


def plot_finetune_reliability(cv: pd.DataFrame, metrics: dict, path: Path | str) -> None:
    """Reliability diagram of the finetuned model's out-of-fold probabilities, raw and temperature-scaled (each fold
    by the other folds' temperature), against the diagonal, with the galaxies per bin below: binary on P(class 1),
    multiclass on the top-class probability. Regression, or temperature scaling off: what there is to show."""
    from zoobot_core.temperature import reliability_bins

    plt = pyplot()
    task = metrics["task"]
    fig, (ax, counts_ax) = plt.subplots(2, 1, figsize=(5.6, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if task == "regression":
        ax.text(0.5, 0.5, "regression: no probabilities to calibrate", ha="center", va="center", transform=ax.transAxes)
        save_figure(fig, path)
        return
    scored = cv[cv["fold"] >= 0]
    truth = scored["label"].to_numpy()
    columns = ["finetuned_score"] if task == "binary" else [f"finetuned_p{k}" for k in range(metrics["config"]["n_classes"])]
    calibration = metrics["methods"]["finetuned"].get("calibration")
    curves = [("raw", "#c0392b", columns)]
    if calibration is not None:
        curves.append(("temperature-scaled", "#2a7ab0", [f"{c}_scaled" for c in columns]))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", lw=1, label="perfectly calibrated")
    width = 0.1 / len(curves)
    for i, (name, colour, cols) in enumerate(curves):
        probabilities = scored[cols[0]].to_numpy() if task == "binary" else scored[cols].to_numpy()
        bins = reliability_bins(probabilities, truth, task)
        used = bins[bins["count"] > 0]
        scores = calibration["raw" if name == "raw" else "scaled"] if calibration is not None else None
        label = name + (f": ECE {scores['ece']:.3f}, Brier {scores['brier']:.3f}, log loss {scores['log_loss']:.3f}" if scores else "")
        ax.plot(used["mean_predicted"], used["observed"], "o-", color=colour, label=label)
        counts_ax.bar(bins["lower"] + width * (i + 0.5), bins["count"], width=width, color=colour, alpha=0.8)
    ax.set_ylabel("share of class 1" if task == "binary" else "share whose top class is right")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    counts_ax.set_xlabel("P(class 1), out of fold" if task == "binary" else "top-class probability, out of fold")
    counts_ax.set_ylabel("galaxies per bin", fontsize=8)
    title = f"{metrics['label']}: the finetuned model's {len(scored)} out-of-fold probabilities"
    if calibration is not None:
        folds = ", ".join(f"{t:.2f}" for t in calibration["fold_temperatures"])
        title += f"\nfold temperatures (each fitted on the other folds): {folds}"
        title += f"\nfinal model T = {calibration['final_temperature']:.2f}" + ("" if calibration["helps"] else " (rescaling did not lower the log loss)")
    else:
        title += "\n(temperature scaling off)"
    ax.set_title(title, fontsize=8)
    save_figure(fig, path)


def finetune_figures(
    cv_path: Path | str, metrics_path: Path | str, ready_path: Path | str, shard_root: Path | str, scores_path: Path | str, roc_path: Path | str, examples_path: Path | str,
    reliability_path: Path | str | None = None,
) -> None:
    """The finetune_figures rule: the scores with their intervals, the ROC figure, the montage of the surest calls and
    (with `reliability_path`) the reliability diagram, raw and temperature-scaled."""
    cv = pd.read_parquet(cv_path)
    metrics = json.loads(Path(metrics_path).read_text())
    ready = pd.read_parquet(ready_path)
    plot_finetune_scores(metrics, scores_path)
    plot_finetune_roc(cv, metrics, roc_path)
    plot_confident_examples(cv, partial(images_of, ShardImages(ready, shard_root)), metrics, examples_path)
    if reliability_path is not None:
        plot_finetune_reliability(cv, metrics, reliability_path)


def images_of(source, ids: list[str]) -> dict[str, np.ndarray]:
    """{id: image} of a few galaxies of an image source (image_source.ShardImages), read from their shards only."""
    rows = np.flatnonzero(np.isin(source.ids, ids))
    return {source.ids[r]: image for picked, batch in source.batches(rows, 64) for r, image in zip(picked, batch)}


_PREDICTOR_STYLE = {"model": ("#2a7ab0", "-", "model"), "raw": ("#c0392b", "-", "raw network"), "constant": ("grey", "--", "constant")}


def _predictor_label(curve: pd.DataFrame, name: str) -> str:
    """'recalibrated' for the model's posterior when the raw network is shown beside it."""
    return "recalibrated" if name == "model" and "raw" in set(curve["predictor"]) else _PREDICTOR_STYLE[name][2]


def plot_calibration(table: pd.DataFrame, curve: pd.DataFrame, path: Path | str, columns: int = 4) -> None:
    """Reliability of the vote-count intervals per question and pooled (observed coverage against what each posterior
    promises; raw network beside recalibrated when both are scored), and held-out NLL per question against the constant."""
    plt = pyplot()
    questions = [q for q in table["question"] if (curve["question"] == q).any()]
    panels = ["all", *questions]
    rows = -(-(len(panels) + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 2.9 * rows), squeeze=False)
    predictors = [p for p in ("raw", "model", "constant") if p in set(curve["predictor"])]
    for ax, question in zip(axes.flat, panels):
        ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=0.8)
        for name in predictors:
            colour, style, _ = _PREDICTOR_STYLE[name]
            part = curve[(curve["question"] == question) & (curve["predictor"] == name)].sort_values("level")
            ax.plot(part["expected"], part["coverage"], style, color=colour, linewidth=2 if question == "all" else 1.3, label=_predictor_label(curve, name))
        n_pairs = int(curve.loc[(curve["question"] == question) & (curve["predictor"] == "model"), "n_pairs"].max() or 0)
        ax.set_title(f"{'all questions' if question == 'all' else question} ({n_pairs} counts)", fontsize=8.5)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        if question == "all":
            ax.legend(fontsize=7, loc="upper left")
            ax.set_xlabel("probability the interval holds the count", fontsize=7.5)
            ax.set_ylabel("fraction of test counts inside\n(below the diagonal: too narrow)", fontsize=7.5)
    bars = axes.flat[len(panels)]
    y = np.arange(len(table))
    from zoobot_core.calibration import predictor_prefix

    names = [p for p in ("raw", "model") if f"{predictor_prefix(p)}nll_difference" in table]
    height = 0.8 / len(names)
    for i, name in enumerate(names):
        prefix = predictor_prefix(name)
        difference = table[f"{prefix}nll_difference"].to_numpy(float)
        errors = np.abs(np.stack([difference - table[f"{prefix}nll_difference_low"].to_numpy(float),
                                  table[f"{prefix}nll_difference_high"].to_numpy(float) - difference]))
        bars.barh(y + (i - (len(names) - 1) / 2) * height, difference, height=height, xerr=errors, capsize=2, ecolor="#333333",
                  color=_PREDICTOR_STYLE[name][0], label=_predictor_label(curve, name))
    bars.axvline(0, color="grey", linewidth=1)
    bars.set_yticks(y, table["question"], fontsize=6.5)
    bars.invert_yaxis()
    bars.tick_params(axis="x", labelsize=7)
    bars.legend(fontsize=7)
    bars.set_xlabel("held-out NLL per galaxy, minus the constant's\n(95% bootstrap; left of 0: better)", fontsize=7.5)
    for ax in list(axes.flat)[len(panels) + 1 :]:
        ax.axis("off")
    fig.suptitle("Reliability of the predicted vote counts (central 5%...95% intervals) and held-out likelihood", fontsize=10)
    save_figure(fig, path)


def plot_pit(pit: pd.DataFrame, path: Path | str, columns: int = 4) -> None:
    """Randomised PIT histograms per question (flat at 1 when a posterior is calibrated; a U: too narrow, a hump: too wide)."""
    plt = pyplot()
    questions = list(dict.fromkeys(pit["question"])) if len(pit) else []
    rows = max(1, -(-len(questions) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 2.4 * rows), squeeze=False)
    label_curve = pd.DataFrame({"predictor": pit["predictor"]}) if len(pit) else pd.DataFrame({"predictor": []})
    for ax, question in zip(axes.flat, questions):
        for name in [p for p in ("raw", "model") if p in set(pit["predictor"])]:
            part = pit[(pit["question"] == question) & (pit["predictor"] == name)].sort_values("bin_low")
            density = part["fraction"].to_numpy() * len(part)
            ax.stairs(density, np.r_[part["bin_low"].to_numpy(), 1.0], color=_PREDICTOR_STYLE[name][0], linewidth=1.5,
                      label=_predictor_label(label_curve, name))
        ax.axhline(1, color="black", linestyle=":", linewidth=0.8)
        n_pairs = int(pit.loc[pit["question"] == question, "n_pairs"].max())
        ax.set_title(f"{question} ({n_pairs} counts)", fontsize=8.5)
        ax.set_xlim(0, 1), ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7)
    if questions:
        axes.flat[0].legend(fontsize=7)
        axes.flat[0].set_xlabel("PIT of the observed count", fontsize=7.5)
        axes.flat[0].set_ylabel("density", fontsize=7.5)
    for ax in list(axes.flat)[len(questions) :]:
        ax.axis("off")
    fig.suptitle("Randomised PIT of each answer's test vote count (uniform = calibrated)", fontsize=10)
    save_figure(fig, path)


def plot_acquisition_montage(
    ranked: pd.DataFrame, image_paths: dict[str, str], tree: DecisionTree, path: Path | str, columns: int = 6, view: Callable[[str], np.ndarray] = view_file
) -> None:
    """The galaxies to label next, most informative first: rank, id, mutual information and the question contributing most."""
    plt = pyplot()
    n = len(ranked)
    rows = max(1, -(-n // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.45 * rows + 0.4), squeeze=False)
    mi_cols = [f"{q.name}_mi" for q in tree.questions]
    reach_cols = [f"{q.name}_reach" for q in tree.questions]
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([]), ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        row = ranked.iloc[i]
        ax.imshow(view(image_paths[row["id_str"]]))
        weighted = row[mi_cols].to_numpy(float) * row[reach_cols].to_numpy(float)
        top_question = tree.questions[int(np.argmax(weighted))].name
        ax.set_title(f"#{int(row['rank'])} {row['id_str']}\nI = {row['mutual_information']:.3f} nats\nmost: {top_question}", fontsize=6.5)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no galaxies to rank", ha="center", va="center")
    fig.suptitle("Galaxies to label next: highest BALD mutual information (MC-dropout samples disagree)", fontsize=10)
    save_figure(fig, path)


def plot_learning_curves(curves: pd.DataFrame, path: Path | str) -> None:
    """Test loss, vote-fraction MAE and confident accuracy against labels, BALD vs random: each seed thin, the mean thick."""
    plt = pyplot()
    metrics = (("test_loss", "test loss: Dirichlet-Multinomial NLL per galaxy"), ("first_question_loss", "first question's test loss"),
               ("vote_fraction_mae", "vote-fraction MAE (vote-weighted)"), ("confident_accuracy", "first question's accuracy (confident galaxies)"))
    metrics = tuple((m, label) for m, label in metrics if m in curves)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    axes = axes[0]
    colours = {"bald": "#c0392b", "random": "#2a7ab0"}
    for ax, (metric, label) in zip(axes, metrics):
        for strategy, part in curves.groupby("strategy"):
            for _, seed_part in part.groupby("seed"):
                seed_part = seed_part.sort_values("n_labelled")
                ax.plot(seed_part["n_labelled"], seed_part[metric], color=colours.get(strategy), alpha=0.3, linewidth=0.8)
            mean = part.groupby("n_labelled")[metric].mean()
            ax.plot(mean.index, mean.to_numpy(), "o-", color=colours.get(strategy), linewidth=2, label=f"{strategy} (mean of {part['seed'].nunique()} seeds)")
        ax.set_xlabel("labelled galaxies")
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Active learning on the synthetic universe: galaxies chosen by BALD vs at random", fontsize=10)
    save_figure(fig, path)
