"""Seed 000's §4.6 analyses of a risk model (Table 5: synthetic codes; Figure 2: t-SNE of
hidden states), run by the evaluation layer on what a model declares."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import MEDDIFFUSION_SMALL, compose_risk_model

from ehrlab import pipeline
from ehrlab.evaluation.risk_analyses import (
    ANALYSES,
    ANALYSIS_SEED,
    augmented_sample,
    run_risk_analyses,
    synthetic_code_table,
)
from ehrlab.models.risk.meddiffusion import MedDiffusion

# As every task builds it: [PAD] 0, [UNK] 1, then the training split's codes.
VOCABULARY = ["[PAD]", "[UNK]", "DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//9//401.9", "LAB//50912//mg/dL"] + [
    f"DIAGNOSIS//ICD//9//{i:03d}.0" for i in range(250, 276)
]
SMALL = MEDDIFFUSION_SMALL


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_model(name: str, overrides=()):
    torch.manual_seed(0)
    return compose_risk_model(name, VOCABULARY, overrides)


def training_batch(n_patients: int, n_visits: int, n_codes: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch in the DataModule contract, left-aligned visits; training visits never hold
    [UNK] (id 1), so their codes are ids 2.."""
    generator = torch.Generator().manual_seed(seed)
    visit_counts = torch.randint(1, n_visits + 1, (n_patients,), generator=generator)
    visit_mask = torch.arange(n_visits)[None] < visit_counts[:, None]
    codes = torch.randint(2, len(VOCABULARY), (n_patients, n_visits, n_codes), generator=generator) * visit_mask[..., None]
    time_to_end = torch.rand(n_patients, n_visits, generator=generator) * 400 * visit_mask
    return {"codes": codes, "visit_mask": visit_mask, "n_visits": visit_counts, "time_delta": time_to_end.clone(),
            "time_to_end": time_to_end, "age": torch.full((n_patients,), 70.0),
            "gender": torch.zeros(n_patients, dtype=torch.long), "subject_id": torch.arange(n_patients),
            "label": torch.arange(n_patients) % 2}


class _DataModule:
    """What the analyses read from a DataModule: the training batches and code frequencies."""

    def __init__(self, batches):
        self.batches = batches
        self.code_frequencies = np.arange(len(VOCABULARY))[::-1].copy()
        self.code_frequencies[:2] = 0  # no training visit holds [PAD] or [UNK]

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None)


def test_synthetic_code_table_ranks_by_hand():
    vocabulary = ["[PAD]", "[UNK]", "DIAGNOSIS//ICD//9//428.0", "DIAGNOSIS//ICD//9//401.9", "LAB//1",
                  "DIAGNOSIS//ICD//9//250.00"]
    synthetic = np.array([0, 50, 5, 0, 9, 5])  # [UNK] would lead; then id 4, then ids 2 and 5 tied
    original = np.array([0, 0, 1, 40, 7, 3])
    table, scalars = synthetic_code_table(synthetic, original, vocabulary, top=3)
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    # R(D_g), R(D_o), code; the tie (ids 2, 5) is broken by original frequency (5 before 2);
    # ranks are among the four codes: [PAD] and [UNK] are not codes.
    assert [row.split(" | ")[:3] for row in rows] == [["| 1", "2", "1"], ["| 2", "3", "250.00"], ["| 2", "4", "428.0"]]
    assert "Congestive heart failure, unspecified" in rows[2]
    assert "[UNK]" not in table and "55 synthetic visits" not in table and "19 synthetic visits in total" in table
    assert scalars["analysis/synthetic_top3_in_original_top3"] == 2.0  # ids 4 and 5 (not 2)
    assert scalars["analysis/distinct_synthetic_codes"] == 3.0
    # Spearman over the four codes: average ranks (2.5, 1, 4, 2.5) and (1, 4, 3, 2).
    assert scalars["analysis/synthetic_original_rank_spearman"] == pytest.approx(-1.5 / math.sqrt(4.5 * 5))


def test_analyses_write_table_and_tsne(tmp_path):
    model = compose_model("meddiffusion", SMALL + ["model.tsne_patients=20", "model.analysis_patients=30"])
    batches = [training_batch(8, 4, 3, seed=s) for s in range(5)]
    results = run_risk_analyses(model, _DataModule(batches), tmp_path)
    table = (tmp_path / "synthetic_codes.md").read_text()
    assert (tmp_path / "tsne_hidden_states.png").stat().st_size > 1000
    assert table.count("\n| ") == 1 + 10  # header + top-10 rows
    # Batches of 8 until 30 patients are read: four batches.
    assert results["analysis/n_synthetic_visits"] == sum(int(b["visit_mask"].sum()) for b in batches[:4])
    assert set(results) == {"analysis/n_synthetic_visits", "analysis/synthetic_top10_in_original_top10",
                            "analysis/synthetic_original_rank_spearman", "analysis/distinct_synthetic_codes",
                            "analysis/synthetic_to_real_hidden_distance_ratio"}
    assert math.isfinite(results["analysis/synthetic_to_real_hidden_distance_ratio"])
    assert model.training  # mode restored


def test_unk_is_never_the_nearest_code(tmp_path):
    """[UNK]'s embedding never trains; pointed at the synthetic visits, it would be their most
    frequent nearest code, and it must still be skipped (like [PAD])."""
    model = compose_model("meddiffusion", SMALL + ["model.tsne_patients=8", "model.analysis_patients=16"])
    batches = [training_batch(8, 4, 3, seed=s) for s in range(2)]
    model.eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(ANALYSIS_SEED)
        synthetic = torch.cat([model.augmented_sequences(b, generator).synthetic_visits[b["visit_mask"]] for b in batches])
        code_table = model.backbone.code_embeddings
        code_table[1] = synthetic.mean(dim=0)  # no training visit holds [UNK]: e_k, h_k, e'_k unchanged
        nearest_any_row = (F.normalize(synthetic, dim=-1) @ F.normalize(code_table, dim=-1).T).argmax(dim=-1)
    model.train()
    assert torch.bincount(nearest_any_row).argmax() == 1  # [UNK] would top Table 5: skipping it matters

    sample = augmented_sample(model, _DataModule(batches).train_dataloader(), 16, 8)
    counts = sample.synthetic_code_counts
    assert counts[0] == counts[1] == 0 and counts.sum() == sample.n_visits == len(synthetic)
    run_risk_analyses(model, _DataModule(batches), tmp_path)
    assert "[UNK]" not in (tmp_path / "synthetic_codes.md").read_text()


def test_models_declare_their_analyses(tmp_path):
    assert set(MedDiffusion.analyses) <= set(ANALYSES)
    lstm = compose_model("lstm", [o for o in SMALL if o.startswith("model.backbone.")])
    assert run_risk_analyses(lstm, _DataModule([training_batch(4, 3, 2, seed=0)]), tmp_path) == {}
    assert not list(tmp_path.iterdir())

    class Misdeclared(torch.nn.Module):
        analyses = ("synthetic_codes", "attention_heatmap")

    with pytest.raises(ValueError, match="attention_heatmap"):
        run_risk_analyses(Misdeclared(), None, tmp_path)


def test_the_runner_writes_meddiffusion_analyses_into_the_run(make_config, tmp_path):
    metrics = pipeline.run(make_config("model=meddiffusion", *SMALL, "model.tsne_patients=40"))
    run_dir = tmp_path / "run"
    table = (run_dir / "synthetic_codes.md").read_text()
    assert table.count("\n| ") == 1 + 10 and "[UNK]" not in table
    assert (run_dir / "tsne_hidden_states.png").stat().st_size > 1000
    written = json.loads((run_dir / "metrics.json").read_text())
    analysis = {k: v for k, v in written.items() if k.startswith("analysis/")}
    assert set(analysis) == {"analysis/n_synthetic_visits", "analysis/synthetic_top10_in_original_top10",
                             "analysis/synthetic_original_rank_spearman", "analysis/distinct_synthetic_codes",
                             "analysis/synthetic_to_real_hidden_distance_ratio"}
    assert analysis == pytest.approx({k: metrics[k] for k in analysis})
    assert analysis["analysis/n_synthetic_visits"] > 0
