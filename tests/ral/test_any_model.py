"""AttentionGRPOTrainer on the models TRL trains: attn_coef=0 is trl.GRPOTrainer on any of them (hybrids, softcap,
sinks; no decoder layer looked up), RAL on hybrid decoders, and unsupported settings failing at construction."""

import copy
import warnings

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tests.testing_utils import PROMPTS, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, CaptureError, capture_attention
from trl_attention_recipes.families import HYBRID_FAMILIES, available_families, build_tiny_family, dummy_inputs

FAMILIES = available_families()
PLAIN = [f for f in ("nemotron_h", "qwen3_5", "qwen3_next", "gpt_oss", "gemma2") if f in FAMILIES]
HYBRIDS = [f for f in HYBRID_FAMILIES if f in FAMILIES]


def _train(trainer_cls, config_cls, tmp_path, name, **overrides):
    torch.manual_seed(0)
    model, tokenizer = build_tiny_family(name)
    args = trainer_args(config_cls, tmp_path, max_steps=2, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
            processing_class=tokenizer,
        )
        trainer.train()
    return trainer


def _logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


@pytest.mark.parametrize("name", PLAIN)
def test_attn_coef_zero_is_grpo_on_any_model(tmp_path, name):
    upstream = _train(GRPOTrainer, GRPOConfig, tmp_path / "a", name)
    # attn_layer=99 exists in no model: with attn_coef=0 nothing of the capture looks it up (pre-flight included).
    ours = _train(AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path / "b", name, attn_coef=0.0, attn_layer=99)
    assert _logged(ours, "loss") == _logged(upstream, "loss") and len(_logged(ours, "loss")) == 2
    for (n, a), (_, b) in zip(upstream.model.named_parameters(), ours.model.named_parameters()):
        assert torch.equal(a, b), n
    assert ours.capture_layers() == {} and ours.attn_model_layer is None
    assert not _logged(ours, "attention/jsd")


@pytest.mark.parametrize("name", HYBRIDS)
def test_ral_trains_hybrid_decoders_on_the_last_attention_layer(tmp_path, name):
    trainer = _train(AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path, name, attn_coef=5.0, num_iterations=2)
    jsds = _logged(trainer, "attention/jsd")
    assert len(jsds) == 2 and jsds[0] < 1e-7 and jsds[1] > 1e-7  # step 2 reuses step 1's rollouts
    assert trainer.attn_model_layer == 3 and trainer.capture_layers() == {"model": -1}


@pytest.mark.parametrize("name", HYBRIDS[:1])
def test_out_of_range_attn_layer_is_a_clear_error_at_construction(tmp_path, name):
    model, tokenizer = build_tiny_family(name)
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_layer=2, num_iterations=2)
    with pytest.raises(CaptureError, match=r"attn_layer=2 is out of range for the 2 attention layers"):
        AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize(("name", "option"), [("gemma2", "attn_logit_softcapping"), ("gpt_oss", "sinks")])
def test_what_fails_at_step_one_fails_at_construction(tmp_path, name, option):
    """Whatever the capture refuses in a real forward, the constructor refuses first, naming module and option."""
    if name not in FAMILIES:
        pytest.skip(f"transformers has no {name}")
    model, tokenizer = build_tiny_family(name)
    try:
        with capture_attention(copy.deepcopy(model), num_rows=2) as cap:
            cap.model(**dummy_inputs())
        refused = None
    except CaptureError as err:
        refused = err
    args = trainer_args(AttentionGRPOConfig, tmp_path, num_iterations=2)
    kwargs = dict(
        model=model,
        reward_funcs=length_reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
    )
    if refused is None:  # the capture supports it: construction must accept it too
        AttentionGRPOTrainer(**kwargs)
        return
    with pytest.raises(
        CaptureError, match=rf"attn_layer=-1: \w+Attention \(attention layer 4 = decoder layer 4.*{option}"
    ):
        AttentionGRPOTrainer(**kwargs)
