"""The RLVR ablation grid: the grid file, the random-reward control, the paired interval, the summary's
columns, and the smoke grid on the tiny model killed mid-cell and resumed to the same results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tulu_lab import ablation
from tulu_lab.rlvr import shuffled_scores
from tulu_lab.stats import paired_difference_interval

ROOT = Path(__file__).resolve().parents[1]
ISSUE_COLUMNS = ["cell", "factor", "value", "seed", "steps", "minutes", "accuracy_before", "accuracy_after",
                 "gain_points", "fixed", "broken", "mcnemar_p", "final_kl", "final_reward"]


def test_the_grid_file_decides_cells_seeds_and_budgets():
    grid = ablation.load_grid(smoke=False)
    names = [c.name for c in grid.cells]
    assert names == ["baseline_seed0", "random_reward_seed0", "beta_0.05_seed0", "beta_0.5_seed0",
                     "start_sft_seed0", "ppo_seed0", "baseline_seed1", "random_reward_seed1"]
    assert grid.heldout_problems >= 1000 and grid.steps >= 10
    assert {c.factor for c in grid.cells} == set(ablation.FACTORS)
    by = {c.name: c for c in grid.cells}
    assert by["random_reward_seed1"].reward_control == "shuffled"
    assert by["start_sft_seed0"].start == "sft" and by["baseline_seed0"].start == "dpo"
    assert by["ppo_seed0"].rlvr == {"algorithm": "ppo"} and by["ppo_seed0"].equal_time == "baseline"
    assert sorted(by[n].rlvr["beta"] for n in ("beta_0.05_seed0", "beta_0.5_seed0")) == [0.05, 0.5]
    smoke = ablation.load_grid(smoke=True)
    assert smoke.steps < grid.steps and {c.seed for c in smoke.cells} == {0}
    assert [c.cell for c in smoke.cells] == list(dict.fromkeys(c.cell for c in grid.cells))
    assert ablation.load_grid(smoke=False, seeds=[3]).cells[0].name == "baseline_seed3"


def test_bad_grids_are_refused_naming_the_cell(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("steps: 2\nminutes: 1\nheldout_problems: 10\ncells:\n"
                    "  - {cell: baseline, factor: baseline, value: x}\n  - {cell: t, factor: temperature, value: 1}\n")
    with pytest.raises(ValueError, match=r"cells\[1\]: factor 'temperature'"):
        ablation.load_grid(path, smoke=False)
    path.write_text("steps: 2\nminutes: 1\nheldout_problems: 10\ncells:\n"
                    "  - {cell: b, factor: beta, value: x, rlvr: {seed: 3}}\n")
    with pytest.raises(ValueError, match=r"cells\[0\]: rlvr may not set seed"):
        ablation.load_grid(path, smoke=False)
    path.write_text("steps: 2\nminutes: 1\nheldout_problems: 10\ncells:\n"
                    "  - {cell: p, factor: algorithm, value: ppo, equal_time: baseline}\n")
    with pytest.raises(ValueError, match="factor 'baseline'"):
        ablation.load_grid(path, smoke=False)


def test_cells_are_runs_of_their_own(tiny_model_dir, tmp_path, monkeypatch):
    from tulu_lab.recipe import load_recipe

    monkeypatch.setenv("TULU_LAB_RUNS", str(tmp_path / "runs"))
    recipe = load_recipe(smoke=True).replace(model=str(tiny_model_dir))
    grid = ablation.load_grid(smoke=True)
    runs = ablation.plan_cells(grid, recipe)
    assert len({r.folder for r in runs.values()}) == len(runs)
    # the same seed: the same config but for the cell's own change, the same data and start
    base, rand, sft = runs["baseline_seed0"], runs["random_reward_seed0"], runs["start_sft_seed0"]
    assert base.cfg == rand.cfg and base.rows == rand.rows and base.start == rand.start
    assert rand.identity["settings"]["reward_control"] == "shuffled" and base.fingerprint != rand.fingerprint
    assert sft.start != base.start and sft.cfg == base.cfg
    assert base.cfg.max_steps == grid.steps and base.cfg.seed == 0
    changed = ablation.plan_cells(ablation.load_grid(smoke=True, steps=grid.steps + 1), recipe)
    assert all(changed[n].folder != runs[n].folder for n in runs)


def test_shuffled_rewards_keep_the_batch_and_lose_the_link_to_correctness():
    gen = torch.Generator().manual_seed(0)
    correct = torch.rand(64, generator=gen) < 0.4
    scores = correct.float() * 10.0
    scores[:5] = -10.0  # a few responses that never stopped
    assert torch.equal(shuffled_scores(scores, 7), shuffled_scores(scores, 7))  # a resume draws the same
    assert not torch.equal(shuffled_scores(scores, 7), shuffled_scores(scores, 8))
    right, wrong = [], []
    for seed in range(2000):
        shuffled = shuffled_scores(scores, seed)
        assert torch.equal(shuffled.sort().values, scores.sort().values)  # same scores: same mean, same scale
        right.append(shuffled[correct].mean().item())
        wrong.append(shuffled[~correct].mean().item())
    mean = scores.mean().item()
    # a correct response gets, on average, the batch mean, exactly as a wrong one does
    assert abs(sum(right) / len(right) - mean) < 0.15 and abs(sum(wrong) / len(wrong) - mean) < 0.15
    assert scores[correct].mean().item() - scores[~correct].mean().item() > 8  # while the verifier's differ


def test_rollout_with_the_control_logs_the_verifiers_reward(tiny):
    from tulu_lab.config import LoraSettings, RLVRConfig
    from tulu_lab.data.synthetic import generate_word_problems, rlvr_row
    from tulu_lab.generate import format_prompt
    from tulu_lab.rlvr import rollout

    model, tokenizer = tiny
    cfg = RLVRConfig.cpu_preset(max_steps=1, max_new_tokens=6, prompts_per_step=4, samples_per_prompt=4,
                                per_device_batch=4, precision="fp32", lora=LoraSettings(r=2, alpha=4))
    rows = [rlvr_row(p) for p in generate_word_problems(4, seed=2)]
    rows[0] = {**rows[0], "ground_truth": "0"}
    texts = [format_prompt(r["messages"], tokenizer) for r in rows]
    plain, info = rollout(cfg, model, tokenizer, rows, texts, seed=5)
    control, cinfo = rollout(cfg, model, tokenizer, rows, texts, seed=5, reward_control="shuffled")
    assert torch.equal(cinfo["verifiable_scores"], plain.scores) and torch.equal(info["verifiable_scores"], plain.scores)
    assert torch.equal(control.scores.sort().values, plain.scores.sort().values)
    with pytest.raises(ValueError, match="reward_control"):
        rollout(cfg, model, tokenizer, rows, texts, seed=5, reward_control="random")


def test_paired_difference_interval():
    # Newcombe (1998), Statistics in Medicine 17:2635, Table II example (a): 8, 5, 4, 5 -> -0.2183, 0.3005
    before = [1] * 8 + [0] * 5 + [1] * 4 + [0] * 5
    after = [1] * 8 + [1] * 5 + [0] * 4 + [0] * 5
    low, high = paired_difference_interval(before, after)
    assert low == pytest.approx(-0.2183, abs=2e-3) and high == pytest.approx(0.3005, abs=2e-3)
    assert paired_difference_interval(after, before) == pytest.approx((-high, -low))
    same = [True, False] * 50
    low, high = paired_difference_interval(same, same)
    assert low < 0 < high and high - low < 0.1
    better = [False] * 60 + [True] * 40
    low, high = paired_difference_interval(better, [True] * 100)
    assert 0 < low < 0.6 < high <= 1.0


def test_compare_and_the_summary_columns():
    assert ablation.SUMMARY_COLUMNS == ISSUE_COLUMNS
    before = [True] * 40 + [False] * 60
    after = [True] * 35 + [False] * 5 + [True] * 20 + [False] * 40
    out = ablation.compare(before, after)
    assert (out["fixed"], out["broken"]) == (20, 5) and out["gain_points"] == pytest.approx(15.0)
    assert out["gain_low"] < 15.0 < out["gain_high"] and out["mcnemar_p"] < 0.01


@pytest.mark.slow
def test_smoke_grid_killed_mid_cell_resumes_to_the_same_results(tiny_model_dir, tmp_path):
    """The smoke grid on the tiny model, SIGKILLed during the second step of the second cell and
    resumed in-process, gives the results of a grid run without a kill."""
    import pandas as pd

    from tulu_lab.training import read_run

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import ablation_resume_script as script
    finally:
        sys.path.pop(0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "ablation_resume_script.py"), str(tiny_model_dir),
                           str(killed / "runs"), str(killed / "figures"), "4"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    cells = {p.name.rsplit("-", 1)[0]: p for p in (killed / "runs" / "smoke" / "ablations").iterdir()}
    assert read_run(cells["baseline_seed0"])["status"] == "finished"
    assert read_run(cells["random_reward_seed0"])["status"] == "running"
    assert (cells["random_reward_seed0"] / "checkpoint-1").is_dir()
    kept = {f: f.stat().st_mtime_ns for f in (cells["random_reward_seed0"] / "checkpoint-1").rglob("*") if f.is_file()}
    first_cell = {f: f.stat().st_mtime_ns for f in cells["baseline_seed0"].rglob("*") if f.is_file()}

    threads = torch.get_num_threads()
    env_runs = os.environ.get("TULU_LAB_RUNS")
    try:
        resumed = script.run(str(tiny_model_dir), str(killed / "runs"), str(killed / "figures"))
        plain = script.run(str(tiny_model_dir), str(tmp_path / "plain" / "runs"), str(tmp_path / "plain" / "figures"))
    finally:
        torch.set_num_threads(threads)
        if env_runs is None:
            os.environ.pop("TULU_LAB_RUNS", None)
        else:
            os.environ["TULU_LAB_RUNS"] = env_runs
    # resumed from its checkpoint, not restarted; the finished cell untouched (its held-out cache aside)
    assert all(f.stat().st_mtime_ns == t for f, t in kept.items())
    assert all(f.stat().st_mtime_ns == t for f, t in first_cell.items() if not f.name.startswith("heldout-"))
    for run in resumed["runs"].values():
        assert read_run(run.folder)["status"] in ("finished", "stopped"), run.spec.name
    summary = pd.read_csv(killed / "figures" / "ablation_summary.csv")
    assert list(summary.columns) == ISSUE_COLUMNS and len(summary) == len(resumed["runs"])
    assert set(summary["factor"]) == set(ablation.FACTORS)
    for name in ("03_rlvr_curves", "04_overoptimization", "10_ablation_summary"):
        assert (killed / "figures" / f"{name}.png").is_file() and (killed / "figures" / f"{name}.csv").is_file()
    # notebook 05 reads a finished grid's results, and only those of the grid it asks for
    read = ablation.read_results(ablation.load_grid(smoke=True), killed / "figures")
    assert read is not None and list(read["summary"].columns) == ISSUE_COLUMNS
    assert {"gain_low", "gain_high", "vs_baseline_p"} <= set(read["details"].columns)
    assert ablation.read_results(ablation.load_grid(smoke=False), killed / "figures") is None
    # PPO's budget is the baseline's measured wall time: its step count is not deterministic
    timed = resumed["curves"]["cell"] == "ppo"
    a = resumed["curves"][~timed].drop(columns=["step_time"]).reset_index(drop=True)
    b = plain["curves"][plain["curves"]["cell"] != "ppo"].drop(columns=["step_time"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-7)
    keep = [c for c in ISSUE_COLUMNS if c != "minutes"]
    pd.testing.assert_frame_equal(resumed["summary"][resumed["summary"]["cell"] != "ppo"][keep].reset_index(drop=True),
                                  plain["summary"][plain["summary"]["cell"] != "ppo"][keep].reset_index(drop=True),
                                  rtol=1e-5, atol=1e-7)
    assert (resumed["summary"]["steps"][resumed["summary"]["cell"] != "ppo"] == 2).all()
