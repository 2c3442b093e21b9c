"""tulu_lab.config: paper defaults agree with hparams.csv, validation names the field, JSON round-trips."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from tulu_lab import config as C
from tulu_lab.config import DPOConfig, LoraSettings, RLVRConfig, SFTConfig, load_config, paper_config

HPARAMS = Path("/work/shared/reference/hparams.csv")

# ------------------------------------------------------------------------------------ hparams.csv

def _is_tulu_rm(cfg) -> bool:
    return cfg.value_model_init == "allenai/Llama-3.1-Tulu-3-8B-RM"


# CSV (stage, param) -> how to read the same quantity from a config. Rows whose param is listed in
# NOT_CONFIG_FIELDS describe something that is not a training setting (the data mix). The RM stage
# (reward-model training) has no config class here: the recipe's RLVR uses no reward model.
CSV_TO_CONFIG = {
    "SFT": {
        "learning_rate": lambda c: c.learning_rate,
        "lr_schedule": lambda c: c.lr_schedule,
        "effective_batch": lambda c: c.effective_batch,
        "max_seq_len": lambda c: c.max_seq_len,
        "warmup_ratio": lambda c: c.warmup_ratio,
        "epochs": lambda c: c.epochs,
        "loss_reduction": lambda c: c.loss_reduction,
        "seed": lambda c: c.seed,
    },
    "DPO": {
        "algorithm": lambda c: f"length-normalized DPO ({c.loss_type})",
        "learning_rate": lambda c: c.learning_rate,
        "effective_batch": lambda c: c.effective_batch,
        "max_seq_len": lambda c: c.max_seq_len,
        "beta": lambda c: c.beta,
        "warmup_ratio": lambda c: c.warmup_ratio,
        "epochs": lambda c: c.epochs,
    },
    "RLVR": {
        "algorithm": lambda c: c.algorithm.upper(),
        "reward_correct_alpha": lambda c: c.correct_reward,
        "non_eos_penalty": lambda c: c.non_stop_penalty,
        "gamma": lambda c: c.gamma,
        "gae_lambda": lambda c: c.lam,
        "clip_eps": lambda c: c.clip,
        "value_coef_c1": lambda c: c.vf_coef,
        "grad_norm_clip": lambda c: c.grad_clip,
        "temperature": lambda c: c.temperature,
        "max_token_len": lambda c: c.max_seq_len,
        "max_prompt_len": lambda c: c.max_prompt_len,
        "minibatches_Nmb": lambda c: c.num_minibatches,
        # the CSV describes the value model in words; the config names the checkpoint
        "value_init": lambda c: "Tulu-3-8B-RM (general RM)" if _is_tulu_rm(c) else c.value_model_init,
        "value_model": lambda c: "8B (Tulu-3-8B-RM init)" if _is_tulu_rm(c) else c.value_model_init,
        "learning_rate": lambda c: c.learning_rate,
        "effective_batch": lambda c: c.rollout_batch,
        "ppo_update_iters_K": lambda c: c.ppo_epochs,
        "response_length": lambda c: c.max_new_tokens,
        "beta": lambda c: c.beta,
        "warmup_ratio": lambda c: c.warmup_ratio,
        "total_episodes_ablation": lambda c: c.total_episodes,
        "total_episodes": lambda c: c.total_episodes,
        "eval_every_steps": lambda c: c.eval_every,
        "training_steps": lambda c: c.max_steps,
    },
}
NOT_CONFIG_FIELDS = {("RLVR", "data")}


def read_hparams():
    if not HPARAMS.exists():
        pytest.skip(f"{HPARAMS} not present")
    with HPARAMS.open(newline="") as handle:
        return list(csv.DictReader(handle))


def parse(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def test_paper_defaults_match_hparams_csv():
    rows = [r for r in read_hparams() if r["stage"] in CSV_TO_CONFIG]
    compared = 0
    for row in rows:
        stage, param = row["stage"], row["param"]
        if (stage, param) in NOT_CONFIG_FIELDS:
            continue
        assert param in CSV_TO_CONFIG[stage], f"hparams.csv row {stage},{row['scale']},{param} is not mapped"
        scales = C.PAPER_SCALES if row["scale"] == "all" else (row["scale"],)
        for scale in scales:
            cfg = paper_config(stage.lower(), scale)
            actual, expected = CSV_TO_CONFIG[stage][param](cfg), parse(row["value"])
            where = f"{stage} {scale} {param} (source: {row['source']})"
            if isinstance(expected, float):
                assert actual == pytest.approx(expected), where
            else:
                assert actual == expected, where
            compared += 1
    assert compared >= 90  # every scale of every mapped row was checked


def test_embedded_presets_keep_the_recipe_choices():
    sft, dpo, rl = (paper_config(stage, "embedded") for stage in ("sft", "dpo", "rlvr"))
    assert sft == SFTConfig.cpu_preset() and sft.loss_reduction == "sum" and sft.lora.r == 16
    assert dpo.loss_type == "dpo_norm" and dpo.beta == 5.0 and dpo.learning_rate == 5e-5
    assert (rl.algorithm, rl.samples_per_prompt, rl.prompts_per_step, rl.max_new_tokens, rl.beta) == (
        "grpo", 8, 2, 96, 0.04)
    assert rl.kl_estimator == "k3" and rl.correct_reward == 10.0 and rl.non_stop_penalty == -10.0
    assert all(c.precision == "bf16-autocast" for c in (sft, dpo, rl))
    assert rl.rollout_batch == 16 and rl.gradient_accumulation == 2 and rl.num_steps == 40


def test_tulu31_grpo_on_top_of_a_paper_scale():
    ppo, grpo = RLVRConfig.for_scale("8B"), RLVRConfig.for_scale("8B", algorithm="grpo")
    assert ppo.algorithm == "ppo" and ppo.samples_per_prompt == 1 and ppo.kl_estimator == "k1"
    assert (grpo.algorithm, grpo.samples_per_prompt, grpo.beta, grpo.kl_estimator) == ("grpo", 16, 0.01, "k3")
    assert grpo.advantage_eps == 1e-8 and grpo.log_ratio_clamp == 40.0 and grpo.value_model_init is None
    # Tülu 3.1 as its command ran it, not PPO's values
    assert (grpo.ppo_epochs, grpo.learning_rate, grpo.lr_schedule, grpo.non_stop_penalty) == (1, 5e-7, "constant", 0.0)
    assert (grpo.prompts_per_step, grpo.rollout_batch, grpo.num_minibatches, grpo.per_device_batch) == (48, 768, 2, 2)
    assert grpo.loss_aggregation == ppo.loss_aggregation == "micro_batch_mean"


# ------------------------------------------------------------------ every preset value vs its source

PROJECT_FIELDS = {"output_dir", "num_processes", "precision", "lora", "checkpoint_every", "log_path", "report_to", "track_kl",
                  "grpo_loss_type", "max_steps"}
UNUSED_BY = {"ppo": {"advantage_scale", "advantage_eps", "log_ratio_clamp"},
             "grpo": {"value_clip", "vf_coef", "gamma", "lam", "whiten_advantages"}}


def _packaged_hparams() -> dict:
    from importlib import resources
    import io

    text = resources.files("tulu_lab.reference").joinpath("hparams.csv").read_text(encoding="utf-8")
    return {(r["stage"], r["scale"], r["param"]): r["value"] for r in csv.DictReader(io.StringIO(text))}


def _value_at(source: str):
    """The value a source string names: a packaged hparams.csv row or an open-instruct command fact."""
    from tulu_lab.reference import commands

    kind, rest = source.split(" ", 1)
    if kind == "hparams.csv":
        return parse(_packaged_hparams()[tuple(rest.split(","))])
    assert kind == "cmd", source
    name, key = rest.split(" ")
    if key.startswith("sizes."):
        return commands.rollout_sizes(name)[key[len("sizes."):]]
    return commands.command_setting(name, key)


def _in_config_terms(field: str, raw):
    if field == "kl_estimator":
        return raw.replace("kl", "k")  # open-instruct's kl1/kl3 are k1/k3 here
    if field == "algorithm":
        return raw.lower()
    return raw


@pytest.mark.parametrize("algorithm", C.RL_ALGORITHMS)
@pytest.mark.parametrize("scale", C.PAPER_SCALES)
def test_every_paper_preset_value_matches_the_source_it_names(scale, algorithm):
    cfg = RLVRConfig.for_scale(scale, algorithm=algorithm)
    sources = RLVRConfig.preset_sources(scale, algorithm)
    for field, source in sources.items():
        expected = _in_config_terms(field, _value_at(source))
        actual = getattr(cfg, field)
        where = f"{scale} {algorithm} {field} = {actual!r}, source {source} = {expected!r}"
        if isinstance(expected, float) and not isinstance(expected, bool):
            assert actual == pytest.approx(expected, rel=1e-12), where
        else:
            assert actual == expected, where
    # every field is sourced, the project's own, or unused by the algorithm
    unsourced = {f.name for f in dataclasses.fields(cfg)} - set(sources) - PROJECT_FIELDS - UNUSED_BY[algorithm]
    assert not unsourced, f"{scale} {algorithm}: no source for {sorted(unsourced)}"
    if "max_steps" not in sources:
        assert cfg.max_steps is None


def test_source_check_catches_a_wrong_value():
    cfg = RLVRConfig.for_scale("8B", algorithm="grpo")
    source = RLVRConfig.preset_sources("8B", "grpo")["learning_rate"]
    assert _value_at(source) == cfg.learning_rate
    assert _value_at(source) != RLVRConfig.for_scale("8B").learning_rate  # PPO's 3e-7 would fail
    with pytest.raises(KeyError, match="no flag"):
        _value_at("cmd tulu31_grpo_8b no_such_flag")


def test_tulu31_batch_sizes_follow_the_command():
    from tulu_lab.reference.commands import rollout_sizes

    sizes = rollout_sizes("tulu31_grpo_8b")  # 12 GPUs x 4 prompts x 16 samples; half-m minibatches
    assert (sizes["world_size"], sizes["prompts_per_step"], sizes["rollout_responses"]) == (12, 48, 768)
    assert (sizes["minibatch_responses"], sizes["num_minibatches"], sizes["micro_batch"]) == (384, 2, 2)
    for name, prompts in (("tulu3_ppo_8b", 224), ("tulu3_ppo_70b", 640), ("tulu3_ppo_405b", 1856)):
        assert rollout_sizes(name)["prompts_per_step"] == prompts and rollout_sizes(name)["num_minibatches"] == 1


def test_embedded_preset_states_its_non_stop_penalty():
    """The CPU preset sets the penalty itself (with its reason), so changing the paper default
    does not change it silently."""
    import inspect

    assert "non_stop_penalty=-10.0" in inspect.getsource(RLVRConfig.cpu_preset)
    cpu = RLVRConfig.cpu_preset()
    assert cpu.non_stop_penalty == -10.0 and cpu.loss_aggregation == "token_mean"
    with pytest.raises(ValueError, match="embedded preset"):
        RLVRConfig.preset_sources("embedded")


def test_trl_loss_type_names_set_the_aggregation():
    for trl_name, aggregation in (("bnpo", "token_mean"), ("grpo", "sequence_mean"), ("dr_grpo", "constant")):
        cfg = RLVRConfig.cpu_preset(grpo_loss_type=trl_name)
        assert cfg.loss_aggregation == aggregation and cfg.grpo_loss_type is None
        assert dataclasses.replace(cfg) == cfg
    with pytest.raises(ValueError, match="loss_aggregation must be one of"):
        RLVRConfig.cpu_preset(loss_aggregation="sum")
    with pytest.raises(ValueError, match="advantage_scale must be one of"):
        RLVRConfig.cpu_preset(advantage_scale="mad")


def test_scale_names_and_overrides():
    assert SFTConfig.for_scale("70b").learning_rate == 2e-6
    assert paper_config("dpo", "8B", beta=2.5).beta == 2.5
    with pytest.raises(ValueError, match="allowed"):
        SFTConfig.for_scale("13B")
    with pytest.raises(ValueError, match="allowed"):
        paper_config("rm", "8B")


def test_rlvr_steps_from_episodes():
    cfg = RLVRConfig.for_scale("70B")
    assert cfg.num_steps == 400_000 // 640
    assert RLVRConfig.for_scale("405B").num_steps == 75  # the run that was actually made


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SFTConfig(learning_rate=0), r"SFTConfig\.learning_rate must be > 0"),
        (lambda: DPOConfig(learning_rate=-1e-7), r"DPOConfig\.learning_rate must be > 0"),
        (lambda: RLVRConfig(learning_rate=0.0), r"RLVRConfig\.learning_rate must be > 0"),
        (lambda: SFTConfig(loss_reduction="avg"), r"loss_reduction must be one of \['sum', 'mean'\]"),
        (lambda: DPOConfig(loss_type="ipo"), r"loss_type must be one of \['dpo_norm', 'dpo'\]"),
        (lambda: DPOConfig(beta=0), r"DPOConfig\.beta must be > 0"),
        (lambda: RLVRConfig(algorithm="reinforce"), r"algorithm must be one of \['ppo', 'grpo'\]"),
        (lambda: RLVRConfig(kl_estimator="kl3"), r"kl_estimator must be one of"),
        (lambda: RLVRConfig(grpo_loss_type="sapo"), r"grpo_loss_type must be one of"),
        (lambda: RLVRConfig(algorithm="grpo", samples_per_prompt=1), r"samples_per_prompt must be >= 2"),
        (lambda: RLVRConfig(prompts_per_step=3, samples_per_prompt=2, per_device_batch=4),
         r"rollout_batch = .* = 6 must be divisible by .* = 4"),
        (lambda: RLVRConfig(num_minibatches=5), r"224 must be divisible"),
        (lambda: RLVRConfig(gamma=0), r"gamma must be in \(0, 1\]"),
        (lambda: RLVRConfig(lam=1.5), r"lam must be in \[0, 1\]"),
        (lambda: RLVRConfig(total_episodes=None), r"set total_episodes or max_steps"),
        (lambda: RLVRConfig(total_episodes=10), r"total_episodes must be None or >= one step"),
        (lambda: RLVRConfig(temperature=0), r"temperature must be > 0"),
        (lambda: SFTConfig(warmup_ratio=1.0), r"warmup_ratio must be in \[0, 1\)"),
        (lambda: SFTConfig(lr_schedule="step"), r"lr_schedule must be one of"),
        (lambda: SFTConfig(precision="fp16"), r"precision must be one of"),
        (lambda: SFTConfig(max_steps=0), r"max_steps must be None or >= 1"),
        (lambda: SFTConfig(grad_clip=0.0), r"grad_clip must be None or > 0"),
        (lambda: SFTConfig(gradient_accumulation=0), r"gradient_accumulation must be > 0"),
        (lambda: LoraSettings(r=0), r"LoraSettings\.r must be > 0"),
        (lambda: LoraSettings(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (lambda: LoraSettings(target_modules=[]), r"target_modules must be a non-empty list"),
    ],
)
def test_invalid_values_raise_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SFTConfig(learning_rate="2e-5"), r"SFTConfig\.learning_rate must be float"),
        (lambda: SFTConfig(epochs=1.5), r"SFTConfig\.epochs must be int"),
        (lambda: SFTConfig(per_device_batch=True), r"per_device_batch must be int"),
        (lambda: SFTConfig(lora={"r": 8}), r"lora must be LoraSettings or None"),
        (lambda: LoraSettings(target_modules="q_proj"), r"target_modules must be list"),
    ],
)
def test_wrong_types_raise(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_replace_revalidates():
    cfg = RLVRConfig.cpu_preset()
    assert dataclasses.replace(cfg, prompts_per_step=4).rollout_batch == 32
    with pytest.raises(ValueError, match="samples_per_prompt"):
        dataclasses.replace(cfg, samples_per_prompt=1)


def test_allowed_names_match_the_losses_module():
    from tulu_lab import losses

    assert set(C.DPO_LOSS_TYPES) == set(losses.DPO_LOSS_TYPES)
    assert set(C.GRPO_LOSS_TYPES) == set(losses.GRPO_LOSS_TYPES)
    assert set(C.LOSS_AGGREGATIONS) == set(losses.LOSS_AGGREGATIONS)
    assert set(C.ADVANTAGE_SCALES) == set(losses.ADVANTAGE_SCALES)
    assert set(C.KL_ESTIMATORS) == set(losses.KL_ESTIMATORS)


def test_importing_config_does_not_import_torch():
    code = "import sys, tulu_lab.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ JSON


@pytest.mark.parametrize("stage", ["sft", "dpo", "rlvr"])
@pytest.mark.parametrize("scale", C.SCALES)
def test_json_round_trip(tmp_path, stage, scale):
    cfg = paper_config(stage, scale)
    path = cfg.save_json(tmp_path / "nested" / f"{stage}-{scale}.json")
    assert json.loads(path.read_text())["stage"] == stage
    assert load_config(path) == cfg
    assert type(cfg).load_json(path) == cfg
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_lora_survives_the_round_trip(tmp_path):
    cfg = SFTConfig.cpu_preset(lora=LoraSettings(r=8, alpha=16, target_modules=["q_proj"], quantize_4bit=True))
    back = load_config(cfg.save_json(tmp_path / "c.json"))
    assert isinstance(back.lora, LoraSettings) and back.lora.r == 8 and back.lora.quantize_4bit


def test_from_dict_rejects_unknown_fields_and_wrong_stage(tmp_path):
    data = SFTConfig().to_dict()
    with pytest.raises(ValueError, match=r"unknown fields \['learning_rte'\]"):
        SFTConfig.from_dict({**data, "learning_rte": 1e-5})
    with pytest.raises(ValueError, match="stage 'sft', not 'dpo'"):
        DPOConfig.from_dict(data)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_config(bad)
    bad.write_text(json.dumps({"stage": "rm"}))
    with pytest.raises(ValueError, match="'stage' must be one of"):
        load_config(bad)


def test_metrics_path_defaults_into_output_dir():
    assert SFTConfig(output_dir="x/y").metrics_path == Path("x/y/metrics.jsonl")
    assert SFTConfig(log_path="z.jsonl").metrics_path == Path("z.jsonl")
