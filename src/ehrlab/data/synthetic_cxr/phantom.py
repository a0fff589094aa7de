"""Procedural chest radiograph phantoms, drawn as whole arrays (no loop over pixels).

A frontal image is a density map over a canonical chest frame (u across, v down, both in
[-1, 1] at the reference pose; the patient's right is on the image's left, as radiographs are
read), sampled on the pixel grid after the image's pose (rotation, scale, shift) maps pixels
into that frame: a pose change moves the anatomy without any resampling. Bright = dense.

Anatomy (per patient, `draw_anatomy`): body outline and shoulders, two lung fields (dark;
narrow apices, width and height varying per patient), diaphragm domes (the right one higher)
with the costophrenic angles they make with the lateral chest wall, mediastinum, trachea,
spine, heart (a tilted ellipse sitting on the left dome, its width = cardiothoracic ratio x
thorax width), aortic knuckle, clavicles, posterior ribs, a gastric bubble, vessel texture
thickest at the hila.

Demographic cues a classifier can learn:
- sex: men have a wider thorax (half-width 0.74 vs 0.69 of the frame, spread 0.025) and no
  breast shadows; women have two soft-tissue shadows over the lower lateral lung fields.
- age: a smooth monotone effect with noise: bone density (ribs, clavicles, spine contrast)
  falls by 0.009 per year from 1.15 at 20, and the aortic knuckle grows by 0.0006 per year.
- race: deliberately an arbitrary, weak, non-anatomical cue (no claim about real anatomy):
  soft-tissue density is shifted by +`race_cue` (BLACK), -`race_cue` (ASIAN) or 0 (others)
  times its between-patient spread, so that seed 004's race AUROC measures whether a model
  keeps a patient's identity; `race_cue=0` removes race from the images.

Findings (seed 004 Table 8), per study:
- Cardiomegaly: cardiothoracic ratio about 0.58 instead of 0.44 (> 0.5 is the radiological
  definition); an AP image magnifies the heart by 12 % (it sits further from the detector).
- Pleural Effusion: fluid fills the lung base up to a meniscus that rises towards the lateral
  wall, blunting the costophrenic angle; one or both sides (per admission).
- Consolidation: a patchy dense opacity (a few Gaussian blobs times texture) in one lobe
  region (per admission), confined to the lung.
- Edema: a bilateral perihilar ("bat-wing") haze fading towards the periphery.
Acquisition (per image): rotation +-5 deg, scale +-5 %, shift a few %, exposure gain and
gamma (`acquisition_jitter` scales all of these), Gaussian pixel noise.

Texture: the vessel markings, the patchy texture of consolidation and edema, and where a
consolidation's blobs sit around its lobe's centre are drawn per image by default
(`texture_change=1`), so two images of one patient differ there even when nothing changed.
`texture_change=0` keeps one texture per patient across all of their images, as real vessels
stay; values between mix the two (at the level of the random knots, so the spread stays the
same).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LOBES = ("right upper", "right middle", "right lower", "left upper", "left lower")
# lobe centres: (side: -1 patient's right = image left, +1 left; lateral offset in lung
# half-widths; height as a share of the lung height from the apex)
_LOBE_CENTRES = np.array([(-1, 0.1, 0.28), (-1, -0.25, 0.62), (-1, 0.2, 0.82), (1, 0.1, 0.3), (1, 0.25, 0.8)],
                         dtype=np.float32)
RACE_CUE_SIGN = {"BLACK": 1.0, "ASIAN": -1.0}
TISSUE_SPREAD = 0.06

ANATOMY_COLUMNS = ("thorax", "lung_top", "costophrenic", "dome", "heart_shift", "normal_ctr", "enlarged_ctr",
                   "tissue", "bone", "knuckle", "breast")


def draw_anatomy(rng: np.random.Generator, gender: np.ndarray, age: np.ndarray, race_group: np.ndarray,
                 race_cue: float) -> pd.DataFrame:
    """Per-patient anatomy (one row per patient, ANATOMY_COLUMNS); `age` in years at the
    patient's first admission, `race_group` as `contract.race_group` gives it."""
    n = len(gender)
    male = np.asarray(gender) == "M"
    race_sign = np.array([RACE_CUE_SIGN.get(str(g), 0.0) for g in race_group])
    age = np.asarray(age, dtype=np.float64)
    return pd.DataFrame({
        "thorax": np.where(male, 0.74, 0.69) + rng.normal(0, 0.025, n),
        "lung_top": rng.normal(-0.70, 0.03, n),
        "costophrenic": rng.normal(0.50, 0.035, n),
        "dome": rng.normal(0.13, 0.02, n),
        "heart_shift": rng.normal(0.0, 0.025, n),
        "normal_ctr": np.clip(rng.normal(0.44, 0.03, n), 0.36, 0.49),
        "enlarged_ctr": np.clip(rng.normal(0.59, 0.03, n), 0.53, 0.68),
        "tissue": 1.0 + rng.normal(0, TISSUE_SPREAD, n) + race_cue * TISSUE_SPREAD * race_sign,
        "bone": np.clip(1.15 - 0.009 * (age - 20) + rng.normal(0, 0.08, n), 0.3, 1.4),
        "knuckle": np.clip(0.025 + 0.0006 * (age - 20) + rng.normal(0, 0.006, n), 0.015, 0.08),
        "breast": np.where(male, 0.0, rng.uniform(0.6, 1.2, n)),
    })


def draw_acquisition(rng: np.random.Generator, n: int, jitter: float = 1.0) -> pd.DataFrame:
    """Per-image pose and exposure; `jitter` scales every deviation from the reference pose
    and exposure (0: all images alike), not the pixel noise."""
    pose = pd.DataFrame({
        "rotation": np.deg2rad(rng.uniform(-5, 5, n)), "scale": rng.uniform(0.95, 1.05, n),
        "shift_x": rng.uniform(-0.04, 0.04, n), "shift_y": rng.uniform(-0.04, 0.04, n),
        "gain": rng.uniform(0.9, 1.1, n), "gamma": rng.uniform(0.85, 1.15, n), "noise": rng.uniform(0.008, 0.025, n),
    })
    if jitter != 1:  # (left untouched at 1, so that the default draws stay bit for bit)
        pose[["rotation", "shift_x", "shift_y"]] *= jitter
        for name in ("scale", "gain", "gamma"):
            pose[name] = 1 + jitter * (pose[name] - 1)
    return pose


def _knots(rng: np.random.Generator, n: int, knots: int) -> np.ndarray:
    return rng.standard_normal((n, knots, knots)).astype(np.float32)


def _smooth_field(z: np.ndarray, size: int) -> np.ndarray:
    """Smooth random fields [n, size, size] (unit spread) from Gaussian knots [n, k, k],
    linearly interpolated (two matrix products, no loop)."""
    n, knots = z.shape[0], z.shape[1]
    grid = np.linspace(0, knots - 1, size, dtype=np.float32)
    weights = np.maximum(0, 1 - np.abs(grid[:, None] - np.arange(knots, dtype=np.float32)[None, :]))
    field = np.einsum("sk,nkl,tl->nst", weights, z, weights, optimize=True)
    return field / field.reshape(n, -1).std(axis=1).reshape(n, 1, 1).clip(1e-6)


VESSEL_KNOTS, PATCH_KNOTS, N_BLOBS, BLOB_SPREAD = 14, 10, 4, 0.09


def _patient_texture(seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vessel knots, patch knots, blob offsets [N_BLOBS, n, 2]) of each image's patient, drawn
    from the patient's own `texture_seed`, so that every image of a patient gets the same."""
    unique, inverse = np.unique(seeds, return_inverse=True)
    streams = [np.random.default_rng(int(seed)) for seed in unique]
    vessels = np.stack([_knots(stream, 1, VESSEL_KNOTS)[0] for stream in streams])
    patch = np.stack([_knots(stream, 1, PATCH_KNOTS)[0] for stream in streams])
    offsets = np.stack([stream.uniform(-BLOB_SPREAD, BLOB_SPREAD, (N_BLOBS, 2)) for stream in streams], axis=1)
    return vessels[inverse], patch[inverse], offsets[:, inverse].astype(np.float32)


def _step(distance, width):
    """A soft 0 -> 1 edge at distance 0 (positive inside), linear over +-width (a ramp costs a
    fraction of a tanh and looks the same once blurred by the JPEG and the resize)."""
    return np.clip(distance * (0.5 / width) + 0.5, 0, 1)


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return frame[name].to_numpy(dtype=np.float32).reshape(-1, 1, 1)


def _frame_coordinates(images: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) [N, S, S] of every pixel under each image's pose."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)
    x, y = axis[None, None, :], axis[None, :, None]
    angle, scale = _column(images, "rotation"), _column(images, "scale")
    dx, dy = x - _column(images, "shift_x"), y - _column(images, "shift_y")
    cos, sin = np.cos(angle), np.sin(angle)
    return (cos * dx + sin * dy) / scale, (-sin * dx + cos * dy) / scale


def render_frontal(images: pd.DataFrame, size: int, rng: np.random.Generator,
                   texture_change: float = 1.0) -> np.ndarray:
    """uint8 [N, size, size] frontal (PA / AP) phantoms for one row per image with the
    ANATOMY_COLUMNS, the `draw_acquisition` columns, `ap` (0/1), `cardiomegaly` (0/1),
    `effusion_right`, `effusion_left` (fluid height as a share of the lung height, 0 none),
    `consolidation` (extent, 0 none), `lobe` (index into LOBES) and `edema` (haze intensity,
    0 none). `rng` draws the per-image textures and the pixel noise; with `texture_change`
    below 1 (module docstring) the rows also need the patient's `texture_seed`."""
    n = len(images)
    # per-image draws first, whatever texture_change is, so the pixel noise's draws stay aligned
    vessel_knots, patch_knots = _knots(rng, n, VESSEL_KNOTS), _knots(rng, n, PATCH_KNOTS)
    offsets = rng.uniform(-BLOB_SPREAD, BLOB_SPREAD, size=(N_BLOBS, n, 2)).astype(np.float32)
    if texture_change < 1:
        own_vessels, own_patch, own_offsets = _patient_texture(images["texture_seed"].to_numpy())
        keep, redraw = np.float32(np.sqrt(1 - texture_change)), np.float32(np.sqrt(texture_change))
        vessel_knots = keep * own_vessels + redraw * vessel_knots
        patch_knots = keep * own_patch + redraw * patch_knots
        # offsets are uniform, not Gaussian: a convex mix keeps them inside the same square
        offsets = np.float32(1 - texture_change) * own_offsets + np.float32(texture_change) * offsets
    u, v = _frame_coordinates(images, size)
    edge = np.float32(max(1.5 / size, 0.006))
    c = {name: _column(images, name) for name in (*ANATOMY_COLUMNS, "ap", "cardiomegaly", "effusion_right",
                                                   "effusion_left", "consolidation", "lobe", "edema", "gain", "gamma",
                                                   "noise")}
    thorax, top, bone = c["thorax"], c["lung_top"], c["bone"]
    body_width = thorax + 0.13
    body = _step(1 - (np.abs(u) / body_width) ** 4 - (np.abs(v - 0.2) / 1.35) ** 4, 0.08)
    shoulder = -0.97 + 0.22 * (u / body_width) ** 2  # air above the sloping shoulders, beside the neck
    body = body * (1 - _step(shoulder - v, 0.03) * _step(np.abs(u) - 0.2, 0.03))

    lungs_effective = np.zeros((n, size, size), np.float32)
    lung_masks = []
    vessels, patch = _smooth_field(vessel_knots, size), _smooth_field(patch_knots, size)
    heart_half_width = 0.9 * thorax * np.where(c["cardiomegaly"] > 0, c["enlarged_ctr"], c["normal_ctr"])
    heart_half_width = heart_half_width * (1 + 0.12 * c["ap"])
    for side, fluid_name in ((-1.0, "effusion_right"), (1.0, "effusion_left")):
        bottom = c["costophrenic"] + (0.03 if side > 0 else -0.01)  # the right dome sits higher
        centre = side * 0.48 * thorax
        half = 0.42 * thorax * (1.05 if side < 0 else 1.0)
        du = (u - centre) / half
        height = bottom - top
        depth = np.clip((v - top) / height, 0, 1)
        width = 0.55 + 0.45 * np.sqrt(depth)
        apex = top + 0.12 * du ** 2
        dome = bottom - c["dome"] * np.clip(1 - du ** 2, 0, 1)
        lung = _step(width - np.abs(du), edge * 2) * _step(v - apex, edge) * _step(dome - v, edge)
        lung_masks.append(lung)
        # effusion: fluid up to a meniscus that climbs towards the lateral wall
        level = c[fluid_name] * height
        meniscus = bottom - level - 0.6 * level * np.clip(side * du * 0.5 + 0.5, 0, 1) ** 2
        fluid = (c[fluid_name] > 0) * _step(v - meniscus, 0.02)
        lungs_effective += lung * (1 - 0.92 * fluid)
    lung_any = np.clip(lung_masks[0] + lung_masks[1], 0, 1)

    # heart, mediastinum, aortic knuckle: soft tissue where the lungs would be
    height = c["costophrenic"] - top
    heart_x = 0.3 * heart_half_width + c["heart_shift"]
    heart_y = c["costophrenic"] - 0.16
    tilt_cos, tilt_sin = np.float32(np.cos(0.35)), np.float32(np.sin(0.35))
    hx, hy = u - heart_x, v - heart_y
    ru, rv = tilt_cos * hx + tilt_sin * hy, -tilt_sin * hx + tilt_cos * hy
    heart_half_height = 0.55 * heart_half_width + 0.04
    # the semi-axis along the tilt, chosen so that the tilted ellipse's horizontal half-extent
    # is exactly heart_half_width (the cardiothoracic ratio is measured horizontally)
    heart_long = np.sqrt(heart_half_width ** 2 - (tilt_sin * heart_half_height) ** 2) / tilt_cos
    heart = _step(1 - (ru / heart_long) ** 2 - (rv / heart_half_height) ** 2, edge * 4)
    mediastinum = _step(0.1 + 0.05 * np.clip((v - top) / height, 0, 1) - np.abs(u - 0.01), edge) \
        * _step(heart_y - v, 0.05)
    knuckle_r = c["knuckle"]
    kx, ky = 0.1 + 0.6 * knuckle_r, top + 0.3 * height
    knuckle = _step(1 - ((u - kx) ** 2 + (v - ky) ** 2) / knuckle_r ** 2, 0.3)
    occluded = np.maximum(np.maximum(heart, mediastinum), knuckle)
    lungs_effective = lungs_effective * (1 - occluded)

    # consolidation: patchy blobs around the lobe's centre, inside the lung only
    lobe = _LOBE_CENTRES[np.clip(c["lobe"].astype(int), 0, len(LOBES) - 1)[..., 0, 0]]
    side = lobe[:, 0].reshape(-1, 1, 1)
    lobe_u = side * 0.48 * thorax + side * lobe[:, 1].reshape(-1, 1, 1) * 0.42 * thorax
    lobe_v = top + lobe[:, 2].reshape(-1, 1, 1) * height
    blobs = np.zeros_like(u)
    for offset in offsets:
        blobs += np.exp(-((u - lobe_u - offset[:, 0, None, None]) ** 2 + (v - lobe_v - offset[:, 1, None, None]) ** 2)
                        / (2 * 0.085 ** 2))
    opacity = c["consolidation"] * np.clip(blobs, 0, 1) * np.clip(0.65 + 0.35 * patch, 0, 1)
    lungs_effective = lungs_effective * (1 - 0.9 * np.clip(1.3 * opacity, 0, 1))
    # edema: bilateral perihilar haze
    hilum_y = top + 0.5 * height
    haze = sum(np.exp(-0.5 * (((u - s * 0.22 * thorax) / 0.32) ** 2 + ((v - hilum_y) / 0.38) ** 2))
               for s in (-1.0, 1.0))
    lungs_effective = lungs_effective * (1 - c["edema"] * np.clip(haze, 0, 1) * (0.85 + 0.1 * patch))
    # vessel markings, thickest at the hila
    near_hila = np.exp(-0.5 * ((np.abs(u) - 0.2 * thorax) ** 2 + (v - hilum_y) ** 2) / 0.3 ** 2)
    lungs_effective = lungs_effective * (1 - (0.06 + 0.12 * near_hila) * np.clip(vessels, 0, 2))

    # bones: clavicles, posterior ribs, spine
    clavicle_line = -0.74 - 0.05 * c["ap"] + 0.25 * (np.abs(u) - 0.3) ** 2
    clavicles = _step(0.028 - np.abs(v - clavicle_line), edge) * _step(0.7 * thorax - np.abs(u), edge) \
        * _step(np.abs(u) - 0.07, edge)
    rib_phase = (v - 0.3 * u ** 2 - top) / 0.15
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * rib_phase)) ** 8 * _step(0.92 * thorax - np.abs(u), 0.02) \
        * _step(v - top + 0.05, 0.02) * _step(c["costophrenic"] - v, 0.02)
    spine = _step(0.055 - np.abs(u - 0.01), edge)
    trachea = _step(0.022 - np.abs(u - 0.01), edge) * _step(top + 0.28 * height - v, 0.02)
    abdomen = _step(v - c["costophrenic"] + 0.1, 0.06) * body
    bubble = _step(1 - ((u - 0.33 * thorax) ** 2 + (v - c["costophrenic"] - 0.12) ** 2) / 0.055 ** 2, 0.3)
    # broad soft-tissue shadows over the lower lateral lung fields, their upper edge fading
    breasts = sum(_step(1 - ((u - s * 0.6 * thorax) / (0.4 * thorax)) ** 2 - ((v - c["costophrenic"]) / 0.3) ** 2,
                        0.5) for s in (-1.0, 1.0)) * _step(v - c["costophrenic"] + 0.22, 0.08)

    density = (0.04 + 0.6 * c["tissue"] * body + 0.06 * abdomen - 0.42 * lungs_effective * body
               + bone * (0.16 * clavicles + 0.07 * ribs * (0.3 + 0.7 * lungs_effective) + 0.05 * spine * body)
               - 0.08 * trachea - 0.12 * bubble * body + 0.1 * c["breast"] * breasts * lung_any * body)
    image = np.clip(c["gain"] * density, 0, 1) ** c["gamma"]
    image = image + c["noise"] * rng.standard_normal(image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_lateral(images: pd.DataFrame, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, size, size] lateral views (the readers keep frontal views only: these exist
    so that the files are complete, and show heart size and posterior fluid coarsely)."""
    u, v = _frame_coordinates(images, size)
    c = {name: _column(images, name) for name in ("tissue", "bone", "cardiomegaly", "effusion_right",
                                                   "effusion_left", "gain", "gamma", "noise")}
    edge = np.float32(max(1.5 / size, 0.006))
    body = _step(1 - (u / 0.78) ** 2 - ((v - 0.15) / 1.2) ** 2, 0.05)
    lung = _step(1 - ((u - 0.05) / 0.5) ** 2 - ((v + 0.05) / 0.58) ** 2, 0.04)
    heart_r = 0.22 + 0.08 * c["cardiomegaly"]
    heart = _step(1 - ((u + 0.22) / heart_r) ** 2 - ((v - 0.22) / 0.24) ** 2, 0.04)
    fluid = (np.maximum(c["effusion_right"], c["effusion_left"]) > 0) * _step(v - 0.38 + 0.3 * (u - 0.3), 0.03)
    spine = _step(0.07 - np.abs(u - 0.58), edge) * (0.8 + 0.2 * np.cos(2 * np.pi * v / 0.12))
    lung_eff = lung * (1 - heart) * (1 - 0.9 * fluid)
    density = 0.04 + 0.6 * c["tissue"] * body - 0.35 * lung_eff * body + c["bone"] * 0.15 * spine * body
    image = np.clip(c["gain"] * density, 0, 1) ** c["gamma"]
    image = image + c["noise"] * rng.standard_normal(image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
