"""Two processes vs one: the RLVR update on a fixed rollout batch, split across ranks or whole.

    torchrun --nproc_per_node 2 tests/distributed_rlvr_script.py RESULT.json

What is compared: every process builds the same tiny LoRA model and the same fixed global rollout
batch (token ids and scores drawn from a fixed seed; no sampling involved). Each rank takes its
contiguous share of the prompt groups and runs the score pass, the advantages (PPO whitening over
both ranks) and ``rlvr_update`` with gradients summed over the two processes. Rank 0 also runs the
same three functions on the whole batch in a single "world" on a separate copy of the model. Rank 0
writes, per configuration, the optimiser-step losses of both runs and the largest difference between
the trained parameters; tests/test_distributed_rlvr.py checks them. Both ranks also report their own
parameters, so the test can check that the ranks stayed identical.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from tulu_lab.config import LoraSettings, RLVRConfig  # noqa: E402
from tulu_lab.rlvr import RolloutBatch, World, compute_advantages, make_value_head, rlvr_update, score_rollout  # noqa: E402
from tulu_lab.tiny import make_tiny_llama  # noqa: E402
from tulu_lab.training import make_optimizer, prepare_trainable  # noqa: E402

N_PROMPTS, GROUP = 4, 4

CONFIGS = {
    # Tülu 3.1 GRPO with the KL inside the loss
    "grpo_beta": dict(algorithm="grpo", beta=0.04, samples_per_prompt=GROUP, per_device_batch=4),
    # beta 0: the zero-std group skips its backward pass; two minibatches drawn from the global batch
    "grpo_skip_minibatches": dict(algorithm="grpo", beta=0.0, samples_per_prompt=GROUP, per_device_batch=2,
                                  num_minibatches=2, ppo_epochs=2, grpo_loss_type="grpo"),
    # Tülu 3 PPO: value head, GAE, whitening over both processes, 2 epochs x 2 minibatches
    "ppo": dict(algorithm="ppo", beta=0.05, samples_per_prompt=1, per_device_batch=2, num_minibatches=2,
                ppo_epochs=2),
    # open-instruct's aggregation at Tülu 3 70B/405B's micro-batch of one: the mean over every process's
    # micro-batches (per-sequence means), so any split over processes gives the same update
    "ppo_micro_batch_mean": dict(algorithm="ppo", beta=0.05, samples_per_prompt=1, per_device_batch=1,
                                 num_minibatches=2, ppo_epochs=1, loss_aggregation="micro_batch_mean"),
}


def fixed_rollout(vocab: int, n_rows: int, group: int) -> tuple[list, list, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    prompts, responses = [], []
    for i in range(n_rows):
        if i % group == 0:  # the samples of one group share their prompt
            p_len = 3 + int(torch.randint(0, 6, (1,), generator=g))
            prompt = torch.randint(2, vocab, (p_len,), generator=g).tolist()
        r_len = 1 + int(torch.randint(0, 9, (1,), generator=g))
        prompts.append(list(prompt))
        responses.append(torch.randint(2, vocab, (r_len,), generator=g).tolist())
    scores = torch.tensor([10.0, 0.0, -10.0])[torch.randint(0, 3, (n_rows,), generator=g)]
    if group > 1:
        scores[:group] = 10.0  # one group whose samples all scored the same
    return prompts, responses, scores


def build(cfg: RLVRConfig):
    model, _ = make_tiny_llama(seed=0)
    torch.manual_seed(5)
    model = prepare_trainable(model, cfg)
    with torch.no_grad():  # non-zero LoRA B, so the policy differs from the reference from the start
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    value_head = make_value_head(model) if cfg.algorithm == "ppo" else None
    params = [p for p in model.parameters() if p.requires_grad] + (list(value_head.parameters()) if value_head else [])
    return model, value_head, params, make_optimizer(params, cfg)


def run(cfg, model, value_head, params, optimizer, prompts, responses, scores, world: World, offset: int):
    batch = RolloutBatch(prompt_ids=prompts, response_ids=responses, scores=scores,
                         group_size=cfg.samples_per_prompt, global_offset=offset)
    score_rollout(cfg, model, batch, value_head=value_head)
    compute_advantages(cfg, batch, world)
    stats = rlvr_update(cfg, model, optimizer, batch, value_head=value_head, step=3, world=world, params=params)
    return stats, [p.detach().clone() for p in params]


def main(out_path: str) -> None:
    accelerator = Accelerator(cpu=True)
    world = World.from_accelerator(accelerator)
    assert world.size == 2, f"expected 2 processes under torchrun, got {world.size}"
    torch.set_num_threads(1)
    results = {}
    for name, overrides in CONFIGS.items():
        group = overrides["samples_per_prompt"]
        n_rows = N_PROMPTS * group if group > 1 else 8
        cfg = RLVRConfig.cpu_preset(algorithm=overrides["algorithm"], **{
            "prompts_per_step": n_rows // group, "learning_rate": 1e-3, "precision": "fp32",
            "lora": LoraSettings(r=4, alpha=8, dropout=0.0), "max_new_tokens": 16, "num_processes": 2,
            **{k: v for k, v in overrides.items() if k != "algorithm"}})
        model, value_head, params, optimizer = build(cfg)
        vocab = model.config.vocab_size
        prompts, responses, scores = fixed_rollout(vocab, n_rows, group)
        share = n_rows // world.size
        lo = world.rank * share
        dist_stats, dist_params = run(cfg, model, value_head, params, optimizer, prompts[lo:lo + share],
                                      responses[lo:lo + share], scores[lo:lo + share], world, lo)
        gathered = [None, None]
        torch.distributed.all_gather_object(gathered, [p.tolist() for p in dist_params])
        if world.is_main:
            single_cfg = RLVRConfig.from_dict({**cfg.to_dict(), "num_processes": 1})
            model1, value_head1, params1, optimizer1 = build(single_cfg)
            one_stats, one_params = run(single_cfg, model1, value_head1, params1, optimizer1, prompts, responses,
                                        scores, World(), 0)
            other = [torch.tensor(p) for p in gathered[1]]
            results[name] = {
                "losses_two_processes": dist_stats.losses,
                "losses_one_process": one_stats.losses,
                "policy_loss": [dist_stats.policy_loss, one_stats.policy_loss],
                "clip_ratio": [dist_stats.clip_ratio, one_stats.clip_ratio],
                "trained_sequences": [dist_stats.trained_sequences, one_stats.trained_sequences],
                "max_param_diff": max(float((a - b).abs().max()) for a, b in zip(dist_params, one_params)),
                "max_param_change": max(float((a - b).abs().max()) for a, b in zip(one_params, build(single_cfg)[2])),
                "max_rank_diff": max(float((a - b).abs().max()) for a, b in zip(dist_params, other)),
            }
        accelerator.wait_for_everyone()
    if world.is_main:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
