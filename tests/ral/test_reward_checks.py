"""GRPO's reward checks (ral/reward_checks.py): a required keyword that neither TRL nor the dataset gives is an error
at construction naming the reward, the parameter and the dataset (TRL's own GRPOTrainer raises a TypeError at the
first step instead); an infinite reward is an error naming the reward function, None stays TRL's "no reward". The
keywords TRL passes are pinned by tests/test_trl_contract.py."""

import math

import pytest
from datasets import Dataset

from tests.testing_utils import trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.ral.reward_checks import missing_reward_inputs
from trl_attention.rewards import accuracy_reward
from trl_attention.tiny import build_tiny_lm

ROWS = [{"prompt": "the red square is", "answer": "red"}] * 4


def _build(tmp_path, reward, train=ROWS, **kwargs):
    model, tokenizer = build_tiny_lm()
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0)
    dataset = Dataset.from_list(train)
    return AttentionGRPOTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer, **kwargs
    )


def test_a_missing_column_is_an_error_naming_the_reward_and_the_column(tmp_path):
    with pytest.raises(ValueError, match=r"reward function 'accuracy_reward' requires `solution`, which train_dataset "
                       r"does not provide: its columns are \['answer', 'prompt'\]"):
        _build(tmp_path, accuracy_reward)
    _build(tmp_path, accuracy_reward, train=[{**row, "solution": "red"} for row in ROWS])  # present: builds


def test_the_eval_dataset_is_checked_too(tmp_path):
    train = [{**row, "solution": "red"} for row in ROWS]
    with pytest.raises(ValueError, match=r"`solution`, which eval_dataset\['held_out'\] does not provide"):
        _build(tmp_path, accuracy_reward, train=train, eval_dataset={"held_out": Dataset.from_list(ROWS)})


def test_the_prompt_column_arrives_as_prompts(tmp_path):
    def by_prompt(completions, prompt, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match=r"requires `prompt`.*TRL passes the `prompt` column as `prompts`"):
        _build(tmp_path, by_prompt)


def test_what_trl_passes_and_defaults_need_no_column(tmp_path):
    def uses_trl_inputs(prompts, completions, completion_ids, trainer_state, answer, missing=None, **kwargs):
        return [0.0] * len(completions)

    _build(tmp_path, [uses_trl_inputs, lambda completions, **kwargs: [0.0] * len(completions)])


def test_missing_reward_inputs_by_hand():
    def f(a, /, b, *args, c, d=1, **kwargs):
        pass

    assert missing_reward_inputs(f, {"a", "b", "c"}) == ["a"]  # positional-only: TRL passes keywords only
    assert missing_reward_inputs(f, {"b"}) == ["a", "c"]
    assert missing_reward_inputs(max, set()) == []  # no readable signature: left to the call


def _train_one_step(tmp_path, reward):
    trainer = _build(tmp_path, reward)
    trainer.args.max_steps = 1
    trainer.train()
    return trainer


def test_an_infinite_reward_is_an_error_naming_the_reward(tmp_path):
    def blows_up(completions, **kwargs):
        return [math.inf if i == 2 else 0.5 for i in range(len(completions))]

    with pytest.raises(ValueError, match=r"reward function 'blows_up' returned inf for completion 2 of the generation "
                       r"batch \(prompt 'the red square is'\): a reward must be finite"):
        _train_one_step(tmp_path, blows_up)


def test_none_stays_trls_no_reward(tmp_path):
    def partial(completions, **kwargs):  # None -> NaN in TRL: that completion has no reward from this function
        return [None if i == 0 else float(len(c)) for i, c in enumerate(completions)]

    assert _train_one_step(tmp_path, [partial, lambda completions, **kw: [1.0] * len(completions)]).state.global_step
