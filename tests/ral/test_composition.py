"""ral/composition.py says what AttentionGRPOTrainer is made of; these tests hold the code to it: the bases and
their order, each component's TRL overrides, its setup hook and order, no read of another component's private
state, and the model card computed from the active components."""

import ast
import inspect
import sys
from types import SimpleNamespace

import pytest
import transformers
import trl
from trl import GRPOTrainer

from trl_attention.papers import PAPERS
from trl_attention.ral import AttentionGRPOTrainer, composition

TRL_CLASS_ATTRIBUTES = {"_tag_names", "_name", "_paper"}  # the model card's, which the trainer sets


def _trl_methods(cls) -> set:
    """Methods `cls` defines itself that GRPOTrainer (or transformers.Trainer) also has: its TRL overrides."""
    return {name for name, value in vars(cls).items() if callable(value) and hasattr(GRPOTrainer, name)} - {
        "__init__"
    }


def test_the_bases_are_the_components_in_order():
    assert AttentionGRPOTrainer.__bases__ == (*composition.mixins(), GRPOTrainer)


@pytest.mark.parametrize("component", composition.COMPONENTS, ids=lambda c: c.name)
def test_each_component_overrides_what_it_declares(component):
    mixin = composition.mixins()[composition.COMPONENTS.index(component)]
    assert _trl_methods(mixin) == set(component.overrides)
    for name in component.provides:  # what the others may read: public, and defined or set by the mixin
        assert not name.startswith("_")
        assert name in vars(mixin) or f"self.{name} =" in inspect.getsource(sys.modules[mixin.__module__]), name
    if component.setup:
        assert component.setup in vars(mixin) and component.setup in composition.SETUP_ORDER


def test_the_ral_term_is_the_trainer_body():
    assert _trl_methods(AttentionGRPOTrainer) == set(composition.RAL_TERM.overrides)


def test_init_runs_the_setup_hooks_in_order():
    init = next(
        node
        for node in ast.walk(ast.parse(inspect.getsource(AttentionGRPOTrainer)))
        if isinstance(node, ast.FunctionDef) and node.name == "__init__"
    )
    calls = [
        node.func.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("_init_")
    ]
    assert calls == list(composition.SETUP_ORDER)
    assert sorted(calls) == sorted(c.setup for c in composition.COMPONENTS if c.setup)


def _self_attributes(source: str, ctx) -> set:
    return {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, ctx)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def _trl_private_state() -> set:
    """Private attributes TRL's GRPOTrainer and transformers' Trainer define or set: the components may use them."""
    names = {name for cls in GRPOTrainer.__mro__ for name in vars(cls) if name.startswith("_")}
    for module in (trl.trainer.grpo_trainer, transformers.trainer):
        names |= _self_attributes(inspect.getsource(module), ast.Store)
    return names


def test_no_component_reads_another_components_private_state():
    trl_state = _trl_private_state()
    modules = {sys.modules[m.__module__] for m in composition.mixins()} | {sys.modules[AttentionGRPOTrainer.__module__]}
    own = {m: _self_attributes(inspect.getsource(m), ast.Store) for m in modules}
    own = {
        m: names | {n for cls in vars(m).values() if inspect.isclass(cls) for n in vars(cls)} for m, names in own.items()
    }
    hooks = set(composition.SETUP_ORDER)  # the trainer calls each component's setup hook (composition.py)
    foreign = {
        f"{module.__name__}: self.{name}"
        for module in modules
        for name in _self_attributes(inspect.getsource(module), ast.Load)
        if name not in own[module] and name not in trl_state and name not in hooks
    }
    assert not foreign, "read another component's private state; offer it by a public name in composition.py"


def _trainer(attn_coef=0.0, rewards=(), teacher=None):
    return SimpleNamespace(attn_coef=attn_coef, attention_reward_indices=list(rewards), teacher_model=teacher)


def test_the_model_card_comes_from_the_active_components():
    base_tags, base_paper = GRPOTrainer._tag_names, GRPOTrainer._paper
    tags, paper = composition.model_card(_trainer(), base_tags, base_paper)
    assert tags == [*base_tags, "trl-attention"] and paper == base_paper  # attn_coef=0: GRPO's card, our tag
    tags, paper = composition.model_card(_trainer(attn_coef=1.0), base_tags, base_paper)
    assert tags[-1] == "ral" and paper["title"] == PAPERS["ral"]["title"] and base_paper["citation"] in paper["citation"]
    tags, paper = composition.model_card(_trainer(rewards=[0], teacher=object()), base_tags, base_paper)
    assert tags[-2:] == ["attention-distillation", "sayo"]
    assert paper["title"] == PAPERS["ral"]["title"] and f"arXiv:{PAPERS['sayo']['id']}" in paper["citation"]
    tags, paper = composition.model_card(_trainer(rewards=[0]), base_tags, base_paper)
    assert tags[-1] == "sayo" and paper["title"] == PAPERS["sayo"]["title"]
    assert f"arXiv:{PAPERS['ral']['id']}" not in paper["citation"]


def test_every_override_is_a_touchpoint_under_contract():
    """Each TRL method a component overrides is listed in trl_internals (whose contract tests pin its signature)."""
    from trl_attention import trl_internals as ti

    contracted = {*ti.GRPO_OVERRIDES, *ti.TRAINER_CHECKPOINT_OVERRIDES}
    overridden = {name for c in (composition.RAL_TERM, *composition.COMPONENTS) for name in c.overrides}
    assert overridden <= contracted, overridden - contracted
