"""The RLVR training commands Ai2 ran, as data: open-instruct's flags and the defaults they relied on.

Source [OI]: allenai/open-instruct ``docs/tulu3.md`` at commit 9157f8ea3 ("the exact command which
produced" each checkpoint); the defaults are the ``Args`` dataclass of the script each command runs
(``open_instruct/ppo_vllm_thread_ray_gtrl.py`` at 9c2d44bec for Tülu 3 PPO,
``open_instruct/grpo_vllm_thread_ray_gtrl.py`` at 9157f8ea3 for Tülu 3.1 GRPO) and facts of its code.

    >>> from tulu_lab.reference.commands import command_setting, rollout_sizes
    >>> command_setting("tulu31_grpo_8b", "learning_rate")
    5e-07
    >>> rollout_sizes("tulu31_grpo_8b")["prompts_per_step"]
    48

``RLVRConfig.preset_sources`` names, for each value of the paper presets, a flag here (``"cmd
tulu31_grpo_8b learning_rate"``) or a row of hparams.csv; tests/test_config.py checks every one.
Flag values are kept as written on the command line (``kl3``, ``constant``), not translated.
"""

from __future__ import annotations

from typing import Any

COMMITS = {"docs": "9157f8ea3", "ppo_script": "9c2d44bec", "grpo_script": "9157f8ea3"}

# Defaults of the scripts' Args (used where a command does not pass the flag) and facts of their code.
PPO_SCRIPT_DEFAULTS: dict[str, Any] = {
    "script": "open_instruct/ppo_vllm_thread_ray_gtrl.py",
    "algorithm": "ppo",
    "value_model": "reward_model_path",  # a separate value model, initialised from the reward model
    "whiten_advantages": True,  # advantages = masked_whiten(advantages, ~padding_mask), always
    "num_epochs": 4,
    "num_mini_batches": 1,
    "kl_estimator": "kl1",
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "eps": 1e-5,
    "cliprange": 0.2,
    "vf_coef": 0.1,
    "cliprange_value": 0.2,
    "gamma": 1.0,
    "lam": 0.95,
    "verification_reward": 10.0,
    "seed": 1,
    "max_grad_norm": 1.0,  # get_train_ds_config(max_norm=1.0) -> DeepSpeed gradient_clipping
    # Args.eps (1e-5) is declared but never passed: torch.optim.AdamW(params, lr=learning_rate)
    "adamw_eps_as_run": 1e-8,
    "adamw_weight_decay_as_run": 0.01,
    # each micro-batch's loss is a masked mean over its own tokens; DeepSpeed averages micro-batches
    "loss_aggregation": "micro_batch_mean",
}

GRPO_SCRIPT_DEFAULTS: dict[str, Any] = {
    "script": "open_instruct/grpo_vllm_thread_ray_gtrl.py",
    "algorithm": "grpo",
    "value_model": None,
    "kl_estimator": "kl3",
    "lr_scheduler_type": "linear",
    "num_epochs": 4,
    "warmup_ratio": 0.0,
    "eps": 1e-5,
    "cliprange": 0.2,
    "verification_reward": 10.0,
    "max_grad_norm": 1.0,  # get_train_ds_config(max_norm=1.0)
    # Args.eps (1e-5) is declared but never passed: torch.optim.AdamW(params, lr=learning_rate)
    "adamw_eps_as_run": 1e-8,
    "adamw_weight_decay_as_run": 0.01,
    "advantage_eps": 1e-8,  # (scores - mean) / (std + 1e-8)
    "advantage_scale": "std",  # divides by the group's (sample) std
    "log_ratio_clamp": 40.0,  # (new_logprobs - ref_logprobs).clamp(-40.0, 40.0)
    "loss_aggregation": "micro_batch_mean",  # masked_mean over each micro-batch, averaged by DeepSpeed
}

COMMANDS: dict[str, dict[str, Any]] = {
    # "Llama-3.1-Tulu-3-8B Reproduction"
    "tulu3_ppo_8b": {
        "defaults": PPO_SCRIPT_DEFAULTS,
        "max_token_length": 2048,
        "max_prompt_token_length": 2048,
        "response_length": 2048,
        "non_stop_penalty": True,
        "stop_token": "eos",
        "temperature": 1.0,
        "learning_rate": 3e-7,
        "total_episodes": 10_000_000,
        "penalty_reward_value": -10.0,
        "per_device_train_batch_size": 2,
        "local_mini_batch_size": 32,
        "local_rollout_batch_size": 32,
        "actor_num_gpus_per_node": [7],
        "beta": 0.05,
        "seed": 3,
        "reward_model_path": "allenai/Llama-3.1-Tulu-3-8B-RM",
        "reward_model_multiplier": 0.0,
        "num_evals": 3,
        "number_samples_per_prompt": 1,  # not passed: the Args default
    },
    # "Llama-3.1-Tulu-3-70B Reproduction"
    "tulu3_ppo_70b": {
        "defaults": PPO_SCRIPT_DEFAULTS,
        "max_token_length": 2048,
        "max_prompt_token_length": 2048,
        "response_length": 2048,
        "beta": 0.07,
        "warmup_ratio": 0.1,
        "seed": 8,
        "non_stop_penalty": True,
        "stop_token": "eos",
        "temperature": 1.0,
        "learning_rate": 1e-7,
        "total_episodes": 400_000,
        "penalty_reward_value": -10.0,
        "per_device_train_batch_size": 1,
        "local_mini_batch_size": 16,
        "local_rollout_batch_size": 16,
        "actor_num_gpus_per_node": [8, 8, 8, 8, 8],
        "reward_model_path": "allenai/Llama-3.1-Tulu-3-8B-RM",
        "reward_model_multiplier": 0.0,
        "num_evals": 3,
        "number_samples_per_prompt": 1,
    },
    # "Llama-3.1-Tulu-3-405B Reproduction"
    "tulu3_ppo_405b": {
        "defaults": PPO_SCRIPT_DEFAULTS,
        "max_token_length": 2048,
        "max_prompt_token_length": 2048,
        "response_length": 1024,
        "beta": 0.05,
        "non_stop_penalty": True,
        "stop_token": "eos",
        "temperature": 1.0,
        "learning_rate": 1e-7,
        "total_episodes": 400_000,
        "num_epochs": 4,
        "penalty_reward_value": -10.0,
        "per_device_train_batch_size": 1,
        "local_mini_batch_size": 8,
        "local_rollout_batch_size": 8,
        "actor_num_gpus_per_node": [8] * 29,
        "seed": 3,
        "reward_model_path": "allenai/Llama-3.1-Tulu-3-8B-RM",
        "reward_model_multiplier": 0.0,
        "num_evals": 3,
        "number_samples_per_prompt": 1,
    },
    # "(NEW) Llama-3.1-Tulu-3.1-8B Reproduction" (the loop values: lr 5e-7, beta 0.01, nspp 16,
    # m "half-m", kl3; local_mini_batch_size = local_rollout_batch_size * nspp / 2)
    "tulu31_grpo_8b": {
        "defaults": GRPO_SCRIPT_DEFAULTS,
        "beta": 0.01,
        "local_mini_batch_size": 32,
        "number_samples_per_prompt": 16,
        "local_rollout_batch_size": 4,
        "kl_estimator": "kl3",
        "learning_rate": 5e-7,
        "max_token_length": 2048,
        "max_prompt_token_length": 2048,
        "response_length": 2048,
        "non_stop_penalty": True,
        "stop_token": "eos",
        "temperature": 1.0,
        "total_episodes": 10_000_000,
        "penalty_reward_value": 0.0,
        "per_device_train_batch_size": 2,
        "actor_num_gpus_per_node": [4, 8],
        "num_epochs": 1,
        "lr_scheduler_type": "constant",
        "seed": 1,
        "num_evals": 30,
        "reward_model_multiplier": 0.0,
    },
}


def command_setting(command: str, flag: str) -> Any:
    """A flag of ``command`` as written, else the script's default (KeyError naming both if neither)."""
    if command not in COMMANDS:
        raise KeyError(f"unknown command {command!r}; available: {sorted(COMMANDS)}")
    facts = COMMANDS[command]
    if flag in facts and flag != "defaults":
        return facts[flag]
    if flag in facts["defaults"]:
        return facts["defaults"][flag]
    raise KeyError(f"command {command!r} has no flag or script default {flag!r}")


def rollout_sizes(command: str) -> dict[str, int]:
    """Batch sizes as the script derives them from the command's flags.

    world = sum(actor_num_gpus_per_node); prompts per step = local_rollout_batch_size * world;
    responses per step = prompts * samples; minibatch = local_mini_batch_size * world responses;
    minibatches = responses / minibatch; a micro-batch is per_device_train_batch_size responses.
    """
    world = sum(command_setting(command, "actor_num_gpus_per_node"))
    prompts = command_setting(command, "local_rollout_batch_size") * world
    responses = prompts * command_setting(command, "number_samples_per_prompt")
    minibatch = command_setting(command, "local_mini_batch_size") * world
    if responses % minibatch:
        raise ValueError(f"{command}: {responses} responses do not split into minibatches of {minibatch}")
    steps = command_setting(command, "total_episodes") // responses
    return {
        "world_size": world,
        "prompts_per_step": prompts,
        "rollout_responses": responses,
        "minibatch_responses": minibatch,
        "num_minibatches": responses // minibatch,
        "micro_batch": command_setting(command, "per_device_train_batch_size"),
        "training_steps": steps,
        "eval_every": max(1, steps // command_setting(command, "num_evals")),
    }
