"""One SFT run of a tiny model, launched by tests/test_distributed.py with and without torchrun.

    torchrun --standalone --nproc_per_node 2 tests/distributed_sft_script.py MODEL_DIR OUT 2 2 2
    python tests/distributed_sft_script.py MODEL_DIR OUT 1 2 4

Arguments: model folder, output folder, processes, per-device batch, gradient accumulation. Both
launches above have a global batch of 8 examples. The main process writes OUT/result.json: the
per-step losses and where the trained LoRA adapters were saved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def data() -> list[dict]:
    """32 conversations with answers of different lengths (so the token sums differ per micro-batch)."""
    rows = []
    for a in range(2, 10):
        for b in range(3, 7):
            extra = " Adding them gives the total." * ((a + b) % 3)
            rows.append({"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                                      {"role": "assistant", "content": f"{a} + {b} = {a + b}.{extra}\n#### {a + b}"}]})
    return rows


def main(model_dir: str, out: str, processes: int, per_device: int, accumulation: int) -> None:
    from tulu_lab.config import LoraSettings, SFTConfig
    from tulu_lab.models import load_model
    from tulu_lab.sft import train_sft

    model, tokenizer = load_model(model_dir, dtype="fp32", verbose=False)
    cfg = SFTConfig(output_dir=out, seed=11, learning_rate=2e-3, warmup_ratio=0.0, max_steps=4,
                    per_device_batch=per_device, gradient_accumulation=accumulation, num_processes=processes,
                    max_seq_len=64, precision="fp32", loss_reduction="sum", grad_clip=1.0,
                    lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    summary = train_sft(cfg, model, tokenizer, data(), resume=False, progress=False)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        losses = [json.loads(line)["loss"] for line in Path(cfg.metrics_path).read_text().splitlines()]
        Path(out, "result.json").write_text(json.dumps({
            "losses": losses, "adapter": str(Path(summary["final_dir"]) / "adapter" / "adapter_model.safetensors")}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
