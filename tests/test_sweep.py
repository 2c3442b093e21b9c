"""Ablation sweeps: cells and their configs, skipping finished cells, resuming killed ones, the tidy table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tulu_lab.config import LLAMA_PROJECTIONS, LoraSettings, RLVRConfig
from tulu_lab.sweep import cell_name, make_cells, run_sweep, summarise_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine lose a lot to it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _base(**overrides):
    return RLVRConfig.cpu_preset(**{"max_steps": 2, **overrides})


def test_cells_are_the_cartesian_product_with_their_configs(tmp_path):
    grid = {"beta": [0.0, 0.04], "lr": [1e-5, 3e-5], "lora_r": [4, 8]}
    cells = make_cells(_base(), grid, seeds=[1, 2], output_dir=tmp_path)
    assert len(cells) == 2 * 2 * 2 * 2
    first = cells[0]
    assert first.name == "beta=0_lr=1e-05_lora_r=4_seed=1" and first.output_dir == tmp_path / first.name
    assert (first.cfg.beta, first.cfg.learning_rate, first.cfg.lora.r, first.cfg.seed) == (0.0, 1e-5, 4, 1)
    assert cells[1].seed == 2 and cells[1].cfg.seed == 2  # seeds innermost
    assert len({c.name for c in cells}) == 16


def test_special_axes(tmp_path):
    grid = {"algorithm": ["grpo", "ppo"], "samples_per_prompt": [4], "lora_target_modules": ["attention", ["q_proj"]],
            "reward": ["verifiable", "verifiable+rm"], "start": ["sft", "dpo"], "lora_alpha": [8]}
    cells = make_cells(_base(reward_model_weight=0.5), grid, [1], tmp_path,
                       checkpoints={"sft": "runs/sft/final", "dpo": "runs/dpo/final"}, source="smollm2-135m")
    assert len(cells) == 16
    by_name = {c.name: c for c in cells}
    c = by_name[cell_name({**{k: v[0] for k, v in grid.items()}, "start": "dpo"}, 1)]
    assert c.cfg.algorithm == "grpo" and c.cfg.samples_per_prompt == 4 and c.source == "runs/dpo/final"
    assert c.cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"] and c.cfg.lora.alpha == 8
    assert c.cfg.reward_model_weight == 0.0 and not c.use_reward_model
    rm = [c for c in cells if c.params["reward"] == "verifiable+rm"]
    assert all(c.use_reward_model and c.cfg.reward_model_weight == 0.5 for c in rm)
    assert {c.cfg.algorithm for c in cells} == {"grpo", "ppo"}
    assert "q_proj" in cells[2].name or "attention" in cells[0].name


def test_bad_grids_fail_before_anything_runs(tmp_path):
    base = _base()
    with pytest.raises(ValueError, match="unknown grid axis 'temperatur'"):
        make_cells(base, {"temperatur": [1.0]}, [1], tmp_path)
    with pytest.raises(ValueError, match="seeds="):
        make_cells(base, {"seed": [1, 2]}, [1], tmp_path)
    with pytest.raises(ValueError, match="reward_model_weight > 0"):
        make_cells(base, {"reward": ["verifiable+rm"]}, [1], tmp_path)
    with pytest.raises(ValueError, match="not a key of checkpoints"):
        make_cells(base, {"start": ["dpo"]}, [1], tmp_path, checkpoints={"sft": "x"})
    with pytest.raises(ValueError, match="non-empty list"):
        make_cells(base, {"beta": []}, [1], tmp_path)
    with pytest.raises(ValueError, match=r"sweep cell samples_per_prompt=1_seed=1: .*samples_per_prompt"):
        make_cells(base, {"samples_per_prompt": [1]}, [1], tmp_path)  # GRPO needs groups of >= 2
    with pytest.raises(ValueError, match="learning_rate"):
        make_cells(base, {"lr": [1e-5, -1.0]}, [1], tmp_path)
    with pytest.raises(ValueError, match="LoRA"):
        make_cells(_base(lora=None), {"lora_r": [4]}, [1], tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        make_cells(base, {"beta": [0.1]}, [1, 1], tmp_path)


def _fake_train(calls):
    """A stand-in for train_rlvr that records its run and logs two steps of metrics, as the real one does."""
    from tulu_lab.training import begin_run, data_fingerprint, finish_run, run_identity

    def train(cfg, model, tokenizer, data, *, eval_data, reward_model, resume, progress, start):
        calls.append(cfg.output_dir)
        identity = run_identity(cfg, start=start, data=data_fingerprint(data),
                                eval_data=data_fingerprint(eval_data) if eval_data is not None else None)
        begin_run(cfg.output_dir, identity, resume=resume)
        path = cfg.metrics_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for step in (1, 2):
                f.write(json.dumps({"step": step, "episodes": step * cfg.rollout_batch, "reward": cfg.beta * step,
                                    "eval/accuracy": cfg.learning_rate * 1e4 + cfg.seed}) + "\n")
        finish_run(cfg.output_dir, step=2, stopped_early=False, wall_time_s=0.0, final_metrics={"step": 2})
        return {"final": {"step": 2}, "eval_accuracy": None}

    return train


def test_tidy_table_and_skipping_finished_cells(tmp_path):
    calls = []
    kwargs = dict(data=[], model_loader=lambda source: (None, None), train_fn=_fake_train(calls),
                  output_dir=tmp_path, progress=False)
    df = run_sweep(_base(), {"beta": [0.0, 0.1], "lr": [1e-5, 2e-5]}, [1, 2], **kwargs)
    assert len(calls) == 8 and len(df) == 16
    assert list(df.columns[:6]) == ["beta", "lr", "seed", "cell", "step", "episodes"]
    assert {"reward", "eval/accuracy", "final"} <= set(df.columns)
    assert df["final"].sum() == 8 and (df[df["final"]]["step"] == 2).all()
    assert (tmp_path / "results.csv").is_file()
    summary = summarise_sweep(df, "eval/accuracy")
    assert len(summary) == 4 and (summary["n"] == 2).all()
    row = summary[(summary["beta"] == 0.1) & (summary["lr"] == 2e-5)].iloc[0]
    assert row["mean"] == pytest.approx(0.2 + 1.5) and row["std"] == pytest.approx(0.7071, abs=1e-3)
    # everything finished: a second call trains nothing and returns the same table
    again = run_sweep(_base(), {"beta": [0.0, 0.1], "lr": [1e-5, 2e-5]}, [1, 2], **kwargs)
    assert len(calls) == 8 and again.equals(df)
    with pytest.raises(ValueError, match="no reward_model"):
        run_sweep(_base(reward_model_weight=1.0), {"beta": [0.0]}, [1], **kwargs)


def test_a_sweep_with_other_settings_never_touches_the_cells_of_another(tmp_path):
    """A finished cell is skipped only when its folder holds a finished run of the cell's exact settings.
    A changed base config (here num_minibatches) in the same folder is refused before anything trains,
    naming what differs, and every file of the earlier cells stays byte-identical; in its own folder it
    trains. A cell killed mid-run (status "running") resumes."""
    from tulu_lab.training import RunMismatchError, update_run

    calls, resumes = [], []
    fake = _fake_train(calls)

    def train(cfg, *args, resume, **kwargs):
        resumes.append(resume)
        return fake(cfg, *args, resume=resume, **kwargs)

    kwargs = dict(data=[], model_loader=lambda source: (None, None), train_fn=train, progress=False)
    run_sweep(_base(), {"beta": [0.0, 0.1]}, [1], output_dir=tmp_path / "a", **kwargs)
    run_sweep(_base(), {"beta": [0.0, 0.1]}, [1], output_dir=tmp_path / "a", **kwargs)
    assert len(calls) == 2  # then both skipped
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file() and p.name != "results.csv"}
    changed = _base(num_minibatches=2, per_device_batch=8)
    with pytest.raises(RunMismatchError, match="num_minibatches: 1 \\(recorded\\) != 2 \\(now\\)"):
        run_sweep(changed, {"beta": [0.0, 0.1]}, [1], output_dir=tmp_path / "a", **kwargs)
    assert len(calls) == 2
    assert {p: p.read_bytes() for p in before} == before
    run_sweep(changed, {"beta": [0.0, 0.1]}, [1], output_dir=tmp_path / "b", **kwargs)
    assert len(calls) == 4
    update_run(tmp_path / "b" / "beta=0_seed=1", status="running")  # as if killed mid-run: it resumes
    run_sweep(changed, {"beta": [0.0, 0.1]}, [1], output_dir=tmp_path / "b", **kwargs)
    assert len(calls) == 5 and resumes[4] is True


@pytest.mark.slow
def test_killed_sweep_resumes_and_skips_finished_cells(tiny_model_dir, tmp_path):
    """A real 2x2 sweep on a tiny model, killed with SIGKILL during the last step of its second cell."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import sweep_resume_script as script
    finally:
        sys.path.pop(0)
    out = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    kill_at = script.STEPS + 3  # cell 1 takes calls 1-3; cell 2 dies in its step 3 (checkpoint 2 written)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "sweep_resume_script.py"), str(tiny_model_dir),
                           str(out), str(kill_at)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    from tulu_lab.training import read_run

    cell_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [read_run(d)["status"] for d in cell_dirs] == ["finished", "running"]

    from tulu_lab.rlvr import train_rlvr

    trained = []

    def counting_train(cfg, *args, **kwargs):
        trained.append((Path(cfg.output_dir).name, sorted(p.name for p in Path(cfg.output_dir).glob("checkpoint-*"))))
        return train_rlvr(cfg, *args, save_merged=False, **kwargs)

    threads = torch.get_num_threads()
    try:
        df = script.sweep(str(tiny_model_dir), str(out), train_fn=counting_train)
    finally:
        torch.set_num_threads(threads)
    assert len(trained) == 3  # the finished cell is skipped
    assert trained[0] == (cell_dirs[1].name, ["checkpoint-1", "checkpoint-2"])  # resumed, not restarted
    assert len(df) == 4 * script.STEPS and df["cell"].nunique() == 4
    assert list(df.columns[:6]) == ["beta", "lr", "seed", "cell", "step", "episodes"]
    for _, cell in df.groupby("cell"):
        assert list(cell["step"]) == [1, 2, 3] and list(cell["final"]) == [False, False, True]
    assert all(read_run(d)["status"] == "finished" for d in out.iterdir() if d.is_dir())
