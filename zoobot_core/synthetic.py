"""Deterministic synthetic galaxy images with Galaxy-Zoo-style volunteer votes, for runs without real data.

Each galaxy is drawn from its own seeded generator (seed, index), so the catalog does not depend on
chunking or on how many galaxies are generated after it. Morphology follows the GZ DECaLS tree:
smooth ellipticals, face-on/inclined discs with or without bars and spiral arms, edge-on discs,
mergers and artefacts, with sky noise, PSF blur and background stars. Volunteers answer each
question from the galaxy's true morphology, with noise that grows as the galaxy gets fainter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from zoobot_core.io import atomic_write_table
from zoobot_core.schemas import DecisionTree, get_tree

log = logging.getLogger(__name__)

BROKEN_KINDS = ("missing_file", "empty_file", "truncated_image", "not_an_image")


@dataclass(frozen=True)
class SyntheticConfig:
    """How many galaxies to draw, at what size, from which seed."""

    n_galaxies: int = 1500
    image_size: int = 128
    seed: int = 42
    unlabelled_fraction: float = 0.1
    n_broken: int = 4  # rows whose image is missing/corrupt, to exercise quarantine
    tree: str | dict = "gz_decals_dr5"  # a shipped tree's name, a tree YAML file, or a definition (get_tree)


@dataclass
class Morphology:
    """The true morphology of one synthetic galaxy: one answer per asked question."""

    answers: dict[str, str]
    clarity: float  # 0..1, how clearly volunteers can see it


def _choice(rng: np.random.Generator, options: list[str], p: list[float]) -> str:
    return options[rng.choice(len(options), p=np.asarray(p) / np.sum(p))]


def draw_morphology(rng: np.random.Generator) -> Morphology:
    """Draw a true morphology following the GZ DECaLS tree's structure."""
    a: dict[str, str] = {}
    a["smooth-or-featured"] = _choice(rng, ["smooth", "featured-or-disk", "artifact"], [0.40, 0.55, 0.05])
    if a["smooth-or-featured"] == "smooth":
        a["how-rounded"] = _choice(rng, ["round", "in-between", "cigar-shaped"], [0.4, 0.4, 0.2])
    elif a["smooth-or-featured"] == "featured-or-disk":
        a["disk-edge-on"] = _choice(rng, ["yes", "no"], [0.25, 0.75])
        if a["disk-edge-on"] == "yes":
            a["edge-on-bulge"] = _choice(rng, ["boxy", "none", "rounded"], [0.2, 0.4, 0.4])
        else:
            a["has-spiral-arms"] = _choice(rng, ["yes", "no"], [0.7, 0.3])
            a["bar"] = _choice(rng, ["strong", "weak", "no"], [0.25, 0.2, 0.55])
            a["bulge-size"] = _choice(rng, ["dominant", "large", "moderate", "small", "none"], [0.1, 0.2, 0.3, 0.25, 0.15])
            if a["has-spiral-arms"] == "yes":
                a["spiral-winding"] = _choice(rng, ["tight", "medium", "loose"], [0.3, 0.4, 0.3])
                a["spiral-arm-count"] = _choice(rng, ["1", "2", "3", "4", "more-than-4", "cant-tell"], [0.05, 0.5, 0.2, 0.1, 0.05, 0.1])
    a["merging"] = (
        "none"
        if a["smooth-or-featured"] == "artifact"
        else _choice(rng, ["none", "minor-disturbance", "major-disturbance", "merger"], [0.82, 0.08, 0.05, 0.05])
    )
    return Morphology(a, clarity=float(rng.uniform(0.35, 1.0)))


def _grid(size: int, centre: tuple[float, float], angle: float, axis_ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elliptical radius, polar angle and along-axis coordinate of every pixel about `centre`."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - centre[0], y - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / axis_ratio
    return np.hypot(u, v), np.arctan2(v, u), u


def _sersic(r: np.ndarray, r_eff: float, n: float) -> np.ndarray:
    b = 2.0 * n - 1.0 / 3.0
    return np.exp(-b * ((r / r_eff + 1e-6) ** (1.0 / n) - 1.0))


def _colour(image: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    return image[..., None] * np.asarray(rgb)[None, None, :]


def _galaxy_light(m: Morphology, size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise-free RGB light of the galaxy (and its companion, if merging)."""
    a = m.answers
    centre = (size / 2 + rng.normal(0, size * 0.015), size / 2 + rng.normal(0, size * 0.015))
    angle = rng.uniform(0, np.pi)
    r_eff = size * rng.uniform(0.10, 0.16)  # cutouts are scaled to the galaxy, as DECaLS ones are
    light = np.zeros((size, size, 3))
    kind = a["smooth-or-featured"]
    if kind == "smooth":
        q = {"round": rng.uniform(0.85, 1.0), "in-between": rng.uniform(0.5, 0.75), "cigar-shaped": rng.uniform(0.2, 0.38)}[a["how-rounded"]]
        r, _, _ = _grid(size, centre, angle, q)
        light += _colour(_sersic(r, r_eff, 4.0), (1.0, 0.78, 0.55))
    elif kind == "featured-or-disk" and a["disk-edge-on"] == "yes":
        r, _, u = _grid(size, centre, angle, rng.uniform(0.07, 0.13))
        light += _colour(np.exp(-r / (r_eff * 0.9)), (0.75, 0.8, 0.95))
        bulge = a["edge-on-bulge"]
        if bulge != "none":
            rb, _, ub = _grid(size, centre, angle, 0.8 if bulge == "rounded" else 0.55)
            if bulge == "boxy":  # boxy isophotes: a superellipse radius
                vb = np.sqrt(np.maximum(rb**2 - ub**2, 0))
                rb = (np.abs(ub) ** 3 + vb**3) ** (1 / 3)
            light += _colour(1.2 * _sersic(rb, r_eff * 0.35, 2.0), (1.0, 0.8, 0.6))
    elif kind == "featured-or-disk":
        q = rng.uniform(0.5, 1.0)
        r, theta, u = _grid(size, centre, angle, q)
        h = r_eff * 0.75
        disc = np.exp(-r / h)
        if a["has-spiral-arms"] == "yes":
            n_arms = {"1": 1, "2": 2, "3": 3, "4": 4, "more-than-4": 6, "cant-tell": int(rng.integers(2, 5))}[a["spiral-arm-count"]]
            pitch = np.deg2rad({"tight": 10, "medium": 20, "loose": 35}[a["spiral-winding"]] + rng.normal(0, 2))
            phase = n_arms * (theta - np.log(r / h + 0.05) / np.tan(pitch)) + rng.uniform(0, 2 * np.pi)
            contrast = 0.9 if a["spiral-arm-count"] != "cant-tell" else 0.4
            arms = np.clip(np.cos(phase), 0, None) ** 2
            disc = disc * (0.25 + contrast * arms * 2.0) * (r > 0.6 * h)
        light += _colour(1.3 * disc, (0.6, 0.75, 1.0))
        bar_strength = {"strong": 1.0, "weak": 0.45, "no": 0.0}[a["bar"]]
        if bar_strength:
            rbar, _, _ = _grid(size, centre, angle + rng.uniform(0.5, 1.2), 0.22)
            light += _colour(bar_strength * 1.1 * np.exp(-((rbar / (1.4 * h)) ** 2)), (1.0, 0.85, 0.65))
        bulge_flux = {"dominant": 2.5, "large": 1.4, "moderate": 0.8, "small": 0.35, "none": 0.0}[a["bulge-size"]]
        if bulge_flux:
            rb, _, _ = _grid(size, centre, angle, 0.9)
            light += _colour(bulge_flux * _sersic(rb, r_eff * 0.3, 3.0), (1.0, 0.8, 0.6))
    # artefacts carry no galaxy; their light is added as image defects in render_galaxy
    merging = a["merging"]
    if merging in ("major-disturbance", "merger"):
        offset = r_eff * (1.6 if merging == "merger" else 2.6)
        phi = rng.uniform(0, 2 * np.pi)
        c2 = (centre[0] + offset * np.cos(phi), centre[1] + offset * np.sin(phi))
        r2, _, _ = _grid(size, c2, rng.uniform(0, np.pi), rng.uniform(0.6, 1.0))
        light += _colour(rng.uniform(0.6, 1.0) * _sersic(r2, r_eff * 0.8, 2.5), (1.0, 0.8, 0.6))
    if merging != "none":  # tidal tail: a faint arc of light
        tail_len = {"minor-disturbance": 1.5, "major-disturbance": 3.0, "merger": 3.5}[merging]
        phi0 = rng.uniform(0, 2 * np.pi)
        for t in np.linspace(0, 1, 25):
            rad = r_eff * (1.2 + tail_len * t)
            phi = phi0 + 1.6 * t
            rt, _, _ = _grid(size, (centre[0] + rad * np.cos(phi), centre[1] + rad * np.sin(phi)), 0.0, 1.0)
            light += _colour(0.12 * np.exp(-((rt / (size * 0.02)) ** 2)), (0.8, 0.8, 0.9))
    return light


def _add_artifact(image: np.ndarray, rng: np.random.Generator) -> None:
    """Satellite trail or saturated star with diffraction spikes, in place."""
    size = image.shape[0]
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        _, _, u = _grid(size, (size / 2 + rng.normal(0, size * 0.1), size / 2), angle + np.pi / 2, 1.0)
        image += _colour(3.0 * np.exp(-((u / 1.2) ** 2)), (0.9, 0.95, 1.0))
    else:
        centre = (size / 2 + rng.normal(0, size * 0.05), size / 2 + rng.normal(0, size * 0.05))
        r, _, _ = _grid(size, centre, 0.0, 1.0)
        star = 20.0 * np.exp(-((r / (size * 0.03)) ** 2))
        y, x = np.mgrid[0:size, 0:size]
        spikes = 2.0 * (np.exp(-np.abs(x - centre[0])) + np.exp(-np.abs(y - centre[1]))) * np.exp(-r / (size * 0.3))
        image += _colour(star + spikes, (1.0, 1.0, 0.95))


def render_galaxy(m: Morphology, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render a morphology to an RGB uint8 image with PSF, sky noise, stars and an asinh stretch."""
    image = np.zeros((size, size, 3)) if m.answers["smooth-or-featured"] == "artifact" else _galaxy_light(m, size, rng)
    image *= 0.4 + 1.6 * m.clarity  # fainter galaxies are harder for volunteers too
    if m.answers["smooth-or-featured"] == "artifact":
        _add_artifact(image, rng)
    for _ in range(rng.poisson(3)):  # foreground stars
        r, _, _ = _grid(size, tuple(rng.uniform(0, size, 2)), 0.0, 1.0)
        image += _colour(rng.uniform(0.5, 6.0) * np.exp(-((r / (size * 0.012)) ** 2)), tuple(rng.uniform(0.7, 1.0, 3)))
    psf_sigma = size * rng.uniform(0.006, 0.012)
    image = np.stack([gaussian_filter(image[..., c], psf_sigma) for c in range(3)], axis=-1)
    image += rng.normal(0.0, 0.04, image.shape)
    stretched = np.arcsinh(np.clip(image, 0, None) / 0.15) / np.arcsinh(1.5 / 0.15)
    return (np.clip(stretched, 0, 1) * 255).astype(np.uint8)


def truth_for_tree(m: Morphology, tree: DecisionTree, rng: np.random.Generator) -> Morphology:
    """The galaxy's true answer to each of `tree`'s questions that its path through the tree reaches.

    Questions the drawn (DECaLS) morphology answers keep that answer; any other reached question (a
    made-up tree's, or an answer the morphology has no name for) gets a uniform draw from `rng`, which
    is used for nothing else, so the DECaLS trees' galaxies and votes do not depend on it.
    """
    truth: dict[str, str] = {}
    for question in tree.questions:
        if question.asked_if is not None and truth.get(question.asked_if[0]) != question.asked_if[1]:
            continue  # not reached by this galaxy's true path
        known = m.answers.get(question.name)
        truth[question.name] = known if known in question.answers else question.answers[int(rng.integers(len(question.answers)))]
    return Morphology(truth, m.clarity)


def simulate_votes(m: Morphology, tree: DecisionTree, rng: np.random.Generator) -> dict[str, int]:
    """Volunteer vote counts for every answer column, walking the tree from its first question."""
    votes: dict[str, int] = {}
    n_volunteers = int(rng.integers(30, 46))
    for question in tree.questions:
        if question.asked_if is None:
            total = n_volunteers
        else:
            parent_q, parent_a = question.asked_if
            total = votes.get(tree.column(parent_q, parent_a), 0)
        truth = m.answers.get(question.name)
        n = len(question.answers)
        if truth is None:  # question not applicable to the truth: volunteers who got here guess
            p = rng.dirichlet(np.ones(n))
        else:
            # confident volunteers pick the truth; the rest spread over neighbouring answers
            i = question.answers.index(truth)
            confidence = 0.45 + 0.5 * m.clarity
            neighbours = np.exp(-np.abs(np.arange(n) - i))
            neighbours[i] = 0
            p = (1 - confidence) * neighbours / neighbours.sum() + confidence * np.eye(n)[i]
        counts = rng.multinomial(total, p)
        for answer, count in zip(question.answers, counts):
            votes[tree.column(question.name, answer)] = int(count)
    return votes


def _write_broken(path: Path, kind: str, rng: np.random.Generator) -> None:
    """Leave a deliberately bad file (or none) at `path`, as real catalogs do."""
    if kind == "missing_file":
        return
    if kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "truncated_image":
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "not_an_image":
        path.write_text("this is not an image\n")


def make_synthetic_catalog(out_dir: Path | str, config: SyntheticConfig) -> pd.DataFrame:
    """Render `config.n_galaxies` PNGs under out_dir/images and write out_dir/catalog.csv; return the catalog.

    The catalog has id_str, file_loc (relative to out_dir), the true morphology (`true_*` columns)
    and a vote-count column per answer; unlabelled galaxies have empty vote columns.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    tree = get_tree(config.tree)
    rows = []
    broken_at = {config.n_galaxies - 1 - k: BROKEN_KINDS[k % len(BROKEN_KINDS)] for k in range(config.n_broken)}
    for index in tqdm(range(config.n_galaxies), desc="rendering synthetic galaxies", mininterval=5):
        rng = np.random.default_rng([config.seed, index])
        morphology = draw_morphology(rng)
        truth = truth_for_tree(morphology, tree, np.random.default_rng([config.seed, index, 1]))
        id_str = f"SYN{index:07d}"
        rel_path = f"images/{id_str}.png"
        if index in broken_at:
            _write_broken(out_dir / rel_path, broken_at[index], rng)
        else:
            Image.fromarray(render_galaxy(morphology, config.image_size, rng)).save(out_dir / rel_path)
        votes = simulate_votes(truth, tree, rng)
        labelled = rng.random() >= config.unlabelled_fraction
        row = {"id_str": id_str, "file_loc": rel_path}
        row.update({f"true_{q.name}": truth.answers.get(q.name) for q in tree.questions})
        row.update({col: (count if labelled else None) for col, count in votes.items()})
        rows.append(row)
    catalog = pd.DataFrame(rows)
    for col in tree.label_cols:
        catalog[col] = catalog[col].astype("Int64")
    for question in tree.questions:
        catalog[f"true_{question.name}"] = catalog[f"true_{question.name}"].astype("string")
    atomic_write_table(catalog, out_dir / "catalog.csv")
    log.info("Wrote %d synthetic galaxies (%d unlabelled, %d deliberately broken) to %s",
             len(catalog), catalog[tree.label_cols[0]].isna().sum(), len(broken_at), out_dir)
    return catalog
