"""TRL-format reward functions built on verify()."""

import pytest

from tulu_lab.rewards import completion_text, make_verifiable_reward, verifiable_reward


def trl_call(reward_func, prompts, completions, **columns):
    """Call a reward function the way TRL's GRPOTrainer does (keywords plus trainer extras)."""
    return reward_func(
        prompts=prompts,
        completions=completions,
        completion_ids=[[1, 2]] * len(completions),
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
        **columns,
    )


COLUMNS = {
    "ground_truth": ["18", "\\frac{1}{2}", '{"func_name": "validate_lowercase"}', "5"],
    "dataset": ["gsm8k", "MATH", "ifeval", "gsm8k"],
}


def test_plain_string_completions_score_one_or_zero():
    completions = ["So 18.", "$\\boxed{0.5}$", "all lower case", "It is 6."]
    assert trl_call(verifiable_reward, ["q"] * 4, completions, **COLUMNS) == [1.0, 1.0, 1.0, 0.0]


def test_conversational_completions_and_the_tulu_scale():
    reward = make_verifiable_reward(correct=10.0)
    assert reward.__name__ == "verifiable_reward_10"
    completions = [
        [{"role": "assistant", "content": "So 18."}],
        [{"role": "assistant", "content": "$\\boxed{\\dfrac12}$"}],
        [{"role": "assistant", "content": "Not Lower"}],
        [{"role": "assistant", "content": "It is 5."}],
    ]
    prompts = [[{"role": "user", "content": "q"}]] * 4
    assert trl_call(reward, prompts, completions, **COLUMNS) == [10.0, 10.0, 0.0, 10.0]


def test_custom_scale():
    reward = make_verifiable_reward(correct=1.0, incorrect=-1.0)
    assert trl_call(reward, ["q"], ["7"], ground_truth=["8"], dataset=["gsm8k"]) == [-1.0]


def test_completion_text_joins_assistant_messages_only():
    messages = [{"role": "assistant", "content": "a"}, {"role": "tool", "content": "x"}, {"role": "assistant", "content": "b"}]
    assert completion_text(messages) == "ab"
    assert completion_text("plain") == "plain"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "x = "}, {"type": "text", "text": "5"}]}]
    assert completion_text(parts) == "x = 5"
    with pytest.raises(ValueError, match="completion"):
        completion_text(42)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same length"):
        verifiable_reward(["q"], ["1", "2"], ground_truth=["1"], dataset=["gsm8k"])
