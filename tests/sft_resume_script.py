"""Run a small SFT job on a saved tiny model; used by tests/test_sft.py, which kills it with SIGKILL.

    python tests/sft_resume_script.py MODEL_DIR OUTPUT_DIR [SECONDS_PER_FORWARD]

Every forward pass sleeps SECONDS_PER_FORWARD (default 0) so that the test can kill the run between
two checkpoints; the sleep changes no number. The run's settings come from ``resume_config`` and
the data from ``resume_data``, which the test imports to run the same job uninterrupted.
"""

from __future__ import annotations

import sys
import time


def resume_data() -> list[dict]:
    rows = []
    for a in range(2, 8):
        for b in range(3, 7):
            answer = f"{a} + {b} = {a + b}." + (" Done." if (a + b) % 3 == 0 else "")
            rows.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                      {"role": "assistant", "content": f"{answer}\n#### {a + b}"}]})
    return rows


def resume_config(output_dir: str):
    from tulu_lab.config import LoraSettings, SFTConfig

    return SFTConfig(output_dir=str(output_dir), seed=7, learning_rate=5e-3, warmup_ratio=0.2, max_steps=8,
                     per_device_batch=2, gradient_accumulation=2, max_seq_len=48, precision="fp32",
                     lora=LoraSettings(r=4, alpha=8, dropout=0.1), checkpoint_every=2)


def load_tiny(model_dir: str):
    from tulu_lab.models import load_model

    return load_model(model_dir, dtype="fp32", verbose=False)


def main(model_dir: str, output_dir: str, seconds_per_forward: float = 0.0) -> None:
    from tulu_lab.sft import train_sft

    model, tokenizer = load_tiny(model_dir)
    if seconds_per_forward:
        model.register_forward_pre_hook(lambda module, args: time.sleep(seconds_per_forward))
    train_sft(resume_config(output_dir), model, tokenizer, resume_data(), resume=True, progress=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
