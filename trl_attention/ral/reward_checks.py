"""GRPO's reward checks, a component of `AttentionGRPOTrainer` (ral/composition.py): a reward function's inputs
checked at construction (a required keyword that neither TRL nor the dataset gives: an error naming the reward and
the column, not a TypeError at step 1), and a reward of +-inf an error naming the reward function (TRL would turn the
group's advantages into NaN: a step that changes nothing, with only `reward: inf` logged). NaN stays what it is in
TRL, "no reward for this completion" (a reward function's None)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .. import trl_internals as ti
from ..visual.rows import named_datasets, prompt_text

__all__ = ["RewardChecksMixin", "check_reward_inputs", "missing_reward_inputs"]


def missing_reward_inputs(func, available) -> list[str]:
    """The parameters `func` requires that a call passing `available` by keyword (as TRL calls reward functions)
    would not fill: required parameters outside `available`, and positional-only ones. [] when its signature cannot be
    read (a builtin) or it takes `**kwargs` only for what is missing."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return []
    missing = []
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if p.kind is p.POSITIONAL_ONLY or p.name not in available:
            missing.append(p.name)
    return missing


def check_reward_inputs(trainer) -> None:
    """At construction, not at the first step: a reward function that requires a keyword TRL will not pass it (no
    such dataset column) is a ValueError naming the reward, the parameter and the dataset's columns. Datasets whose
    columns are not known before reading (a generator-built `IterableDataset`) are left to the first step."""
    given = set(ti.REWARD_KWARGS)
    if getattr(trainer, "environments", None) is not None:
        given |= set(ti.OPTIONAL_REWARD_KWARGS)
    for dataset_name, dataset in named_datasets(trainer.train_dataset, trainer.eval_dataset):
        columns = getattr(dataset, "column_names", None)
        if dataset is None or columns is None:
            continue
        available = given | (set(columns) - set(ti.REWARD_EXCLUDED_COLUMNS))
        for func, name in zip(trainer.reward_funcs, trainer.reward_func_names):
            if isinstance(func, nn.Module):  # a reward model reads the text, not columns
                continue
            own = {"attention"} if getattr(func, "requires_attention", False) else set()
            missing = missing_reward_inputs(func, available | own)
            if missing:
                excluded = [c for c in missing if c in ti.REWARD_EXCLUDED_COLUMNS]
                why = (
                    f" (TRL passes the `{excluded[0]}` column as `{excluded[0]}s`)"
                    if excluded and excluded[0] != "completion_ids"
                    else ""
                )
                raise ValueError(
                    f"reward function {name!r} requires {', '.join(f'`{m}`' for m in missing)}, which {dataset_name} "
                    f"does not provide{why}: its columns are {sorted(columns)}, and TRL also passes "
                    f"{sorted(given)}. Add the column, give the parameter a default, or take it from **kwargs."
                )


class RewardChecksMixin:
    """Mix into a GRPOTrainer subclass; call `_init_reward_checks()` in `__init__`."""

    def _init_reward_checks(self) -> None:
        check_reward_inputs(self)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        infinite = torch.isinf(rewards)
        if infinite.any():
            row, func = (int(i) for i in infinite.nonzero()[0])
            local = row - self.accelerator.process_index * len(prompts)  # rewards are gathered over processes
            prompt = f" (prompt {prompt_text(prompts[local])[:80]!r})" if 0 <= local < len(prompts) else ""
            raise ValueError(
                f"reward function {self.reward_func_names[func]!r} returned {rewards[row, func].item()} for completion "
                f"{row} of the generation batch{prompt}: a reward must be finite (return None for no reward); an "
                "infinite one makes the group's advantages NaN and the step a no-op"
            )
        return rewards
