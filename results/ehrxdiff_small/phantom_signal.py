"""How much of the change between a pair's two images is the change of its findings? Per
phantom setting (RESULTS.md, "A phantom where the findings' change is the signal").

For every pair of consecutive frontal images of one admission, the later image is drawn twice
with one texture and one pose: with its own findings, and with the earlier image's findings.
The squared pixel difference between those two is what the findings' change moves; the
squared difference between the later and the earlier image is everything a forecaster is
scored against. Their ratio, over the pairs whose findings changed, is the findings' share of
the target-minus-previous signal: what the events could explain at best. Pixels in [0, 1],
images at the task's 64 x 64 (drawn directly at that size, without the JPEG).

    python results/ehrxdiff_small/phantom_signal.py [--patients 300]

One thread; a few seconds per setting.
"""

from __future__ import annotations

import argparse

import numpy as np

from ehrlab.data.synthetic_cxr import SyntheticCXRConfig, model, phantom, writers

FINDING_COLUMNS = ("cardiomegaly", "effusion_right", "effusion_left", "consolidation", "edema")
SETTINGS = [  # (texture_change, acquisition_jitter)
    (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.5), (0.0, 0.25), (0.0, 0.0)]


def consecutive_pairs(images):
    """(earlier rows, later rows) of consecutive frontal studies inside one admission."""
    frontal = images[images.view.isin(("AP", "PA")) & (images.hadm_id >= 0)].drop_duplicates("study_id")
    frontal = frontal.sort_values(["hadm_id", "index"])
    same_stay = frontal.hadm_id.to_numpy()[1:] == frontal.hadm_id.to_numpy()[:-1]
    return frontal.iloc[:-1][same_stay].reset_index(drop=True), frontal.iloc[1:][same_stay].reset_index(drop=True)


def signal(texture_change: float, acquisition_jitter: float, patients: int, size: int = 64) -> dict:
    config = SyntheticCXRConfig(n_patients=patients, spontaneous_change=0.0, texture_change=texture_change,
                                acquisition_jitter=acquisition_jitter)
    cohort = writers.draw_cohort(config)
    earlier, later = consecutive_pairs(writers.image_table(cohort, config))

    def draw(rows, seed):
        return phantom.render_frontal(rows, size, np.random.default_rng(seed), texture_change).astype(np.float32) / 255

    target = draw(later, 1)
    target_unchanged = draw(later.assign(**{name: earlier[name].to_numpy() for name in FINDING_COLUMNS}), 1)
    previous = draw(earlier, 2)
    changed = (later[list(model.FINDINGS)].to_numpy() != earlier[list(model.FINDINGS)].to_numpy()).any(axis=1)
    total = ((target - previous) ** 2).mean(axis=(1, 2))
    findings = ((target - target_unchanged) ** 2).mean(axis=(1, 2))
    return {"pairs": len(target), "changed": int(changed.sum()), "total_same": total[~changed].mean(),
            "total_changed": total[changed].mean(), "findings_changed": findings[changed].mean(),
            "share": findings[changed].sum() / total[changed].sum()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=300)
    args = parser.parse_args()
    print("| texture_change | acquisition_jitter | pairs (changed) | MSE target-previous, unchanged pairs "
          "| changed pairs | of it the findings | findings' share |")
    print("|---|---|---|---|---|---|---|")
    for texture_change, jitter in SETTINGS:
        row = signal(texture_change, jitter, args.patients)
        print(f"| {texture_change:g} | {jitter:g} | {row['pairs']} ({row['changed']}) | {row['total_same']:.5f} "
              f"| {row['total_changed']:.5f} | {row['findings_changed']:.5f} | {row['share']:.3f} |")


if __name__ == "__main__":
    main()
