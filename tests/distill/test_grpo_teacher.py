"""AttentionGRPOTrainer's teacher term (L_RL + mu * L_GKD + gamma * L_AttnDistill on the rollouts): values against
eager twins and a hand-written JSD, effect on the updates, metrics, drop-in behaviour and errors."""

import warnings

import pytest
import torch

from tests.testing_utils import TEACHER_SHAPE, count_forwards, hand_jsd, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.distributed import DistributedChecksCallback
from trl_attention.tiny import build_tiny_lm, build_tiny_vlm, make_grounding_dataset


def _run(tmp_path, dataset, teacher=None, **overrides):
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=2, attn_coef=0.0, **overrides)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            teacher_model=teacher,
        )
        trainer.train()
    return trainer, [str(w.message) for w in caught]


def _logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_terms_equal_hand_computation_on_vlm_rollouts(tmp_path, temperature):
    teacher, processor = build_tiny_vlm(seed=1, **TEACHER_SHAPE)
    path = str(tmp_path / "teacher")
    teacher.save_pretrained(path)
    processor.save_pretrained(path)  # a teacher loaded by path, with its tokenizer checked against the student's
    model, processor = build_tiny_vlm(seed=0)
    args = trainer_args(
        AttentionGRPOConfig,
        tmp_path / "run",
        max_steps=1,
        attn_coef=0.0,
        num_iterations=2,
        loss_type="grpo",
        gkd_coef=1.3,
        attn_distill_coef=0.7,
        temperature=temperature,  # the token term reads both models at TRL's sampling temperature
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            processing_class=processor,
            train_dataset=make_grounding_dataset(8),
            teacher_model=path,
        )
        trainer.train()
    batch = trainer._buffered_inputs[0]
    trainer.model.eval()  # eval: no gradient-accumulation scaling in TRL's normalisation
    with torch.no_grad():
        with_terms = trainer._compute_loss(trainer.model, batch)
        trainer.gkd_coef = trainer.attn_distill_coef = 0.0
        without = trainer._compute_loss(trainer.model, batch)
        student, _ = build_tiny_vlm(seed=0, attn_implementation="eager")  # fresh: TRL patches model.forward
        student.load_state_dict(trainer.model.state_dict())
        eager_teacher, _ = build_tiny_vlm(seed=1, attn_implementation="eager", **TEACHER_SHAPE)
        eager_teacher.load_state_dict(teacher.state_dict())
        rows = batch["completion_ids"].size(1)
        kwargs = dict(
            input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
            attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            output_attentions=True,
        )
        s_out, t_out = student(**kwargs), eager_teacher(**kwargs)
    s_logits, t_logits = (out.logits[:, -rows - 1 : -1] / temperature for out in (s_out, t_out))
    token = hand_jsd(s_logits.softmax(-1), t_logits.softmax(-1))
    length = kwargs["input_ids"].size(1)
    positions = torch.arange(length - rows, length)
    before = torch.arange(length)[None, :] < positions[:, None]  # keys strictly before each completion token

    def policy(attentions):
        rows_ = attentions[-1].mean(1)[:, -rows:] * before
        return rows_ / rows_.sum(-1, keepdim=True)

    attention = hand_jsd(policy(s_out.attentions), policy(t_out.attentions))
    cm = batch["completion_mask"].float()
    per_sequence = lambda x: ((x * cm).sum(-1) / cm.sum(-1).clamp(min=1)).mean()  # loss_type="grpo"
    assert per_sequence(token) > 1e-4 and per_sequence(attention) > 1e-7
    torch.testing.assert_close(
        with_terms - without, 1.3 * per_sequence(token) + 0.7 * per_sequence(attention), atol=1e-6, rtol=1e-4
    )
    assert _logged(trainer, "distill/gkd_jsd") and _logged(trainer, "attention/distill_jsd")


def test_teacher_term_changes_updates_and_zero_coefficients_change_nothing(tmp_path, text_dataset):
    plain, _ = _run(tmp_path / "plain", text_dataset)
    teacher, _ = build_tiny_lm(seed=1, **TEACHER_SHAPE)
    taught, _ = _run(tmp_path / "taught", text_dataset, teacher=teacher, gkd_coef=1.0, attn_distill_coef=1.0)
    assert len(_logged(taught, "distill/gkd_jsd")) == 2 and len(_logged(taught, "attention/distill_jsd")) == 2
    changed = [not torch.equal(a, b) for a, b in zip(plain.model.parameters(), taught.model.parameters())]
    assert any(changed)
    idle, messages = _run(tmp_path / "idle", text_dataset, teacher=build_tiny_lm(seed=1)[0])
    assert any("teacher_model is unused" in m for m in messages)
    for a, b in zip(plain.model.parameters(), idle.model.parameters()):
        assert torch.equal(a, b)
    assert not _logged(idle, "distill/gkd_jsd")


def test_coefficients_without_teacher_and_mismatched_teacher_are_errors(tmp_path, text_dataset):
    with pytest.raises(ValueError, match="need a teacher_model"):
        _run(tmp_path / "a", text_dataset, gkd_coef=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        _run(tmp_path / "b", text_dataset, teacher=build_tiny_lm(seed=1, vocab_size=700)[0], gkd_coef=1.0)


def test_teacher_term_adds_no_student_forward(tmp_path, text_dataset):
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=1, attn_coef=0.0, gkd_coef=1.0, attn_distill_coef=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=text_dataset,
            processing_class=tokenizer,
            teacher_model=build_tiny_lm(seed=1)[0],
        )
        trainer.train()
    batch = trainer._buffered_inputs[0]
    with count_forwards(student=trainer.model.model, teacher=trainer.teacher_model.model) as calls:  # backbones
        trainer._compute_loss(trainer.model, batch)
    assert calls == {"student": 1, "teacher": 1}


def test_freeze_vision_tower_option_trains_only_the_language_model(tmp_path):
    model, processor = build_tiny_vlm(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=1, num_iterations=2, freeze_vision_tower=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            processing_class=processor,
            train_dataset=make_grounding_dataset(8),
        )
        trainer.train()
    assert any(isinstance(cb, DistributedChecksCallback) for cb in trainer.callback_handler.callbacks)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    visual = [(n, p) for n, p in trainer.model.named_parameters() if n.startswith("model.visual.")]
    assert any("merger" in n for n, _ in visual)  # the projector is part of it
    for name, param in visual:
        assert not param.requires_grad and id(param) not in optimised and torch.equal(param, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if "language_model" in n)
