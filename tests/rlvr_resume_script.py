"""A short PPO RLVR run on a tiny model, optionally killed with SIGKILL in the middle (for the resume test).

    python tests/rlvr_resume_script.py MODEL_DIR OUTPUT_DIR KILL_AT_CALL

KILL_AT_CALL > 0: the reward model sends SIGKILL to this process on its KILL_AT_CALL-th call (one call
per step), i.e. in the middle of that step, after the checkpoint of an earlier step was written.
0: never. The run itself is ``run()``, which the test also calls in-process for the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def reward_model_factory(kill_at_call: int):
    calls = {"n": 0}

    def reward_model(prompts, responses):
        calls["n"] += 1
        if kill_at_call and calls["n"] == kill_at_call:
            os.kill(os.getpid(), signal.SIGKILL)
        # deterministic and varied: prefers short responses with many digits
        return [sum(c.isdigit() for c in r) * 0.5 - 0.05 * len(r) for r in responses]

    return reward_model


def run(model_dir: str, output_dir: str, kill_at_call: int = 0, algorithm: str = "ppo"):
    import torch

    from tulu_lab.chat import install_tulu_template
    from tulu_lab.config import LoraSettings, RLVRConfig
    from tulu_lab.data.synthetic import generate_word_problems, rlvr_row
    from tulu_lab.models import load_model
    from tulu_lab.rlvr import train_rlvr

    torch.set_num_threads(1)
    model, tokenizer = load_model(model_dir, dtype="fp32", verbose=False)
    install_tulu_template(tokenizer)
    rows = [rlvr_row(p) for p in generate_word_problems(12, seed=3)]
    cfg = RLVRConfig.cpu_preset(
        algorithm=algorithm, output_dir=output_dir, max_steps=5, checkpoint_every=2, max_new_tokens=6,
        prompts_per_step=2, samples_per_prompt=2 if algorithm == "grpo" else 1, per_device_batch=2,
        ppo_epochs=2, learning_rate=5e-3, precision="fp32", lora=LoraSettings(r=4, alpha=8),
        reward_model_weight=0.5, eval_every=0)
    return train_rlvr(cfg, model, tokenizer, rows, reward_model=reward_model_factory(kill_at_call),
                      progress=False, save_merged=False)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
