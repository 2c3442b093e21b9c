"""A 2x2 sweep on a tiny model, killed with SIGKILL in the middle of its second cell (resume test).

    python tests/sweep_resume_script.py MODEL_DIR OUTPUT_DIR KILL_AT_CALL

The reward model is called once per training step; on call KILL_AT_CALL (counted over the whole
sweep) it kills this process. ``sweep()`` is shared with tests/test_sweep.py, which resumes in-process.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STEPS = 3


def sweep(model_dir: str, output_dir: str, *, kill_at_call: int = 0, train_fn=None):
    import torch

    from tulu_lab.chat import install_tulu_template
    from tulu_lab.config import LoraSettings, RLVRConfig
    from tulu_lab.data.synthetic import generate_word_problems, rlvr_row
    from tulu_lab.models import load_model
    from tulu_lab.sweep import run_sweep

    torch.set_num_threads(1)
    calls = {"n": 0}

    def reward_model(prompts, responses):
        calls["n"] += 1
        if kill_at_call and calls["n"] == kill_at_call:
            os.kill(os.getpid(), signal.SIGKILL)
        return [0.1 * len(r) for r in responses]

    def loader(source):
        model, tokenizer = load_model(source, dtype="fp32", verbose=False)
        install_tulu_template(tokenizer)
        return model, tokenizer

    base = RLVRConfig.cpu_preset(max_steps=STEPS, checkpoint_every=1, max_new_tokens=5, prompts_per_step=2,
                                 samples_per_prompt=2, per_device_batch=2, precision="fp32",
                                 lora=LoraSettings(r=2, alpha=4), eval_every=0, reward_model_weight=0.5)
    rows = [rlvr_row(p) for p in generate_word_problems(8, seed=1)]
    return run_sweep(base, {"beta": [0.0, 0.05], "lr": [1e-3, 3e-3]}, seeds=[7], data=rows, model=model_dir,
                     model_loader=loader, reward_model=reward_model, output_dir=output_dir, progress=False,
                     **({"train_fn": train_fn} if train_fn else {}))


if __name__ == "__main__":
    sweep(sys.argv[1], sys.argv[2], kill_at_call=int(sys.argv[3]))
