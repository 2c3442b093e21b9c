"""The smoke ablation grid on a tiny model, killed with SIGKILL in the middle of a cell (resume test).

    python tests/ablation_resume_script.py MODEL_DIR RUNS_DIR FIGURES_DIR KILL_AT_STEP

The verifier is wrapped to count rollout steps over the whole grid; in rollout step KILL_AT_STEP (the
SFT and DPO runs are trained first) this process kills itself. ``run()`` is shared with
tests/test_ablation.py, which resumes in-process.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(model_dir: str, runs_dir: str, figures_dir: str, *, kill_at_step: int = 0):
    os.environ["TULU_LAB_RUNS"] = runs_dir
    import torch

    from tulu_lab import ablation, rlvr
    from tulu_lab.recipe import load_recipe

    torch.set_num_threads(1)
    if kill_at_step:
        original = rlvr.rollout
        calls = {"n": 0}

        def counting_rollout(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        rlvr.rollout = counting_rollout
    recipe = load_recipe(smoke=True).replace(model=model_dir)
    grid = ablation.load_grid(smoke=True, heldout_problems=12)
    return ablation.run_ablations(grid, recipe, figures_dir=figures_dir, progress=False)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], sys.argv[3], kill_at_step=int(sys.argv[4]))
