"""AttentionGKDTrainer: equality with TRL's GKDTrainer at gamma=0, loss and gradients against eager attention and TRL's
own generalized JSD, VLM inputs in both paths, the distillation effect, tokenisation checks, collator errors."""

import importlib.util
import math
import sys
import warnings

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from trl.experimental.gkd import GKDConfig, GKDTrainer

from tests.testing_utils import ROOT, TEACHER_SHAPE, count_forwards, gkd_args, hand_jsd
from trl_attention.distill import (
    AttentionGKDConfig,
    AttentionGKDTrainer,
    TokenizationMismatchError,
    attention_distill_per_token,
    check_same_tokenization,
    completion_rows,
)
from trl_attention.distill.collator import VisionDistillationCollator, validate_distillation_dataset
from trl_attention.distributed import DistributedChecksCallback
from trl_attention.tiny import build_tiny_lm, build_tiny_vlm, make_grounding_dataset, save_tiny_vlm

EXAMPLES = ROOT / "examples"
BENCHMARKS = EXAMPLES.parent / "benchmarks"


def _vlm_dataset(n=4):
    # completions of different lengths, so right padding is exercised
    return make_grounding_dataset(n).map(
        lambda row, i: {"completion": " ".join([row["answer"]] * (1 + i % 3)) + " is the answer"}, with_indices=True
    )


def _vlm_trainer(tmp_path, teacher=None, **overrides):
    student, processor = build_tiny_vlm(seed=0)
    teacher = teacher if teacher is not None else build_tiny_vlm(seed=1, **TEACHER_SHAPE)[0]
    args = gkd_args(AttentionGKDConfig, tmp_path, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionGKDTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=_vlm_dataset(), processing_class=processor
        )


def _eager_reference(trainer, batch, gamma):
    """GKD loss (TRL's own function on eager logits) + gamma * hand-computed attention JSD, from eager twins."""
    student, _ = build_tiny_vlm(seed=0, attn_implementation="eager")  # fresh: TRL may patch the trained model
    student.load_state_dict(trainer.model.state_dict())
    teacher, _ = build_tiny_vlm(seed=1, attn_implementation="eager", **TEACHER_SHAPE)
    teacher.load_state_dict(trainer.teacher_model.state_dict())
    ids, labels = batch["input_ids"], batch["labels"]
    types = torch.cat([batch["prompt_mm_token_type_ids"], torch.zeros_like(ids[:, batch["prompts"].size(1) :])], 1)
    kwargs = dict(
        input_ids=ids,
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        mm_token_type_ids=types,
        output_attentions=True,
    )
    s_out = student(**kwargs)
    with torch.no_grad():
        t_out = teacher(**kwargs)
    gkd = GKDTrainer.generalized_jsd_loss(s_out.logits[:, :-1], t_out.logits[:, :-1], labels[:, 1:], beta=0.5)
    s_attn, t_attn = s_out.attentions[-1].mean(1), t_out.attentions[-1].mean(1)
    terms = []
    for b, t in (labels != -100).nonzero().tolist():
        p, q = s_attn[b, t, :t], t_attn[b, t, :t]
        terms.append(hand_jsd(p / p.sum(), q / q.sum()))
    attn = torch.stack(terms).mean()
    return gkd + gamma * attn, attn, student


def test_gamma_zero_is_bit_identical_to_gkd_trainer(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
        for p, a in [("the red square is", "red"), ("name a shape", "circle"), ("what colour", "blue green")]
    ]
    dataset = Dataset.from_list(rows * 2)
    runs = []
    for trainer_cls, config_cls, extra in (
        (GKDTrainer, GKDConfig, {}),
        (AttentionGKDTrainer, AttentionGKDConfig, {"attn_distill_coef": 0.0}),
    ):
        student, tokenizer = build_tiny_lm(seed=0)
        teacher, _ = build_tiny_lm(seed=1, **TEACHER_SHAPE)
        args = gkd_args(config_cls, tmp_path / trainer_cls.__name__, lmbda=0.5, learning_rate=1e-2, **extra)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = trainer_cls(
                model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=tokenizer
            )
            trainer.train()
        runs.append(trainer)
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in runs]
    assert losses[0] == losses[1] and len(losses[0]) == 3
    for (name, a), (_, b) in zip(runs[0].model.named_parameters(), runs[1].model.named_parameters()):
        assert torch.equal(a, b), name
    assert not any("attention/distill_jsd" in h for h in runs[1].state.log_history)
    # text-only with the term on: TRL's left-padded ChatML batches, the term changes the updates and is logged
    student, tokenizer = build_tiny_lm(seed=0)
    args = gkd_args(AttentionGKDConfig, tmp_path / "on", lmbda=0.5, learning_rate=1e-2, attn_distill_coef=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGKDTrainer(
            model=student,
            teacher_model=build_tiny_lm(seed=1, **TEACHER_SHAPE)[0],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.train()
    logged = [h["attention/distill_jsd"] for h in trainer.state.log_history if "attention/distill_jsd" in h]
    assert len(logged) == 3 and all(0 < v < math.log(2) for v in logged)
    assert any(not torch.equal(a, b) for a, b in zip(runs[1].model.parameters(), trainer.model.parameters()))


def test_vlm_loss_and_gradients_match_eager_reference(tmp_path):
    gamma = 0.7
    trainer = _vlm_trainer(tmp_path, attn_distill_coef=gamma)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert (batch["attention_mask"][:, -1] == 0).any()  # completions of different lengths: right padding exercised
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    reference, attn, eager_student = _eager_reference(trainer, batch, gamma)
    reference.backward()
    assert attn > 1e-6
    torch.testing.assert_close(loss, reference, atol=1e-6, rtol=1e-4)
    theirs = {n: p.grad for n, p in eager_student.named_parameters() if p.grad is not None}
    assert ours.keys() == theirs.keys() and any("visual" in n for n in ours)  # the image reached the student
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-4, msg=name)
    logged = trainer._metrics["train"]["attention/distill_jsd"]
    assert logged and math.isclose(logged[-1], attn.item(), rel_tol=1e-4)


def test_on_policy_generation_receives_the_images_and_trains(tmp_path):
    trainer = _vlm_trainer(tmp_path, lmbda=1.0, max_steps=2, attn_distill_coef=1.0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    config = trainer.generation_config
    config.do_sample = False
    ids, mask, labels = trainer.generate_on_policy_outputs(trainer.model, batch, config)
    direct = trainer.model.generate(
        input_ids=batch["prompts"],
        attention_mask=batch["prompt_attention_mask"],
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        mm_token_type_ids=batch["prompt_mm_token_type_ids"],
        generation_config=config,
    )
    assert torch.equal(ids, direct)
    width = batch["prompts"].size(1)
    assert (labels[:, :width] == -100).all() and (labels[:, width:] != -100).any()
    assert not torch.isin(ids[:, width:], torch.tensor([trainer.model.config.image_token_id])).any()
    config.do_sample = True
    trainer.train()
    logged = [h["attention/distill_jsd"] for h in trainer.state.log_history if "attention/distill_jsd" in h]
    assert len(logged) == 2 and all(0 < v < math.log(2) for v in logged)


def test_attention_only_distillation_halves_the_jsd(tmp_path):
    teacher, _ = build_tiny_vlm(seed=1, **TEACHER_SHAPE)
    with torch.no_grad():  # a sharper teacher, so there is something to learn
        attention = teacher.model.language_model.layers[-1].self_attn
        attention.q_proj.weight.mul_(4.0)
        attention.k_proj.weight.mul_(4.0)
    trainer = _vlm_trainer(
        tmp_path,
        teacher=teacher,
        lmbda=0.0,
        gkd_coef=0.0,
        attn_distill_coef=1.0,
        max_steps=40,
        learning_rate=5e-3,
        per_device_train_batch_size=4,
        lr_scheduler_type="constant",
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        before = _eager_reference(trainer, batch, 1.0)[1]
    trainer.train()
    with torch.no_grad():
        after = _eager_reference(trainer, batch, 1.0)[1]
    assert after <= 0.5 * before, (before.item(), after.item())


def test_mismatched_tokenizer_saved_with_the_teacher_is_a_clear_error(tmp_path):
    path = save_tiny_vlm(tmp_path / "teacher", seed=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(path)
    with pytest.raises(TokenizationMismatchError, match="vocabulary"):
        _vlm_trainer(tmp_path / "run", teacher=path)


@pytest.mark.parametrize(
    ("where", "name", "value", "message"),
    [
        ("config", "image_token_id", 7, "image_token_id"),
        ("text", "vocab_size", 600, "vocab_size"),
        ("vision", "patch_size", 16, "vision_config.patch_size"),
    ],
)
def test_config_mismatches_are_named(where, name, value, message):
    student, processor = build_tiny_vlm(seed=0)
    teacher, _ = build_tiny_vlm(seed=1)
    config = {"config": teacher.config, "text": teacher.config.text_config, "vision": teacher.config.vision_config}
    setattr(config[where], name, value)
    with pytest.raises(TokenizationMismatchError, match=message):
        check_same_tokenization(student, teacher, processor)


def test_image_processor_settings_saved_with_the_teacher_must_match(tmp_path):
    student, processor = build_tiny_vlm(seed=0)
    teacher = Qwen2_5_VLForConditionalGeneration.from_pretrained(save_tiny_vlm(tmp_path / "teacher", seed=1))
    check_same_tokenization(student, teacher, processor)  # same settings: passes
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]
    with pytest.raises(TokenizationMismatchError, match="image_mean"):
        check_same_tokenization(student, teacher, processor)


def test_capture_shapes_must_agree():
    with pytest.raises(RuntimeError, match="differ in shape"):
        attention_distill_per_token(torch.rand(2, 3, 10), torch.rand(2, 3, 11))


def test_completion_rows_for_left_and_right_padded_layouts():
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, -100, -100, 7, 8]])
    rows, mask = completion_rows(labels)
    assert rows == 3 and mask.tolist() == [[1, 1, 0], [0, 1, 1]]
    assert completion_rows(torch.full((2, 4), -100))[0] == 1


def test_collator_layout_and_bad_rows_are_named():
    _, processor = build_tiny_vlm(seed=0)
    rows = [_vlm_dataset(2)[i] for i in range(2)]
    batch = VisionDistillationCollator(processor)(rows)
    width = batch["prompts"].size(1)
    assert torch.equal(batch["input_ids"][:, :width], batch["prompts"])
    assert (batch["labels"][:, :width] == -100).all()
    completion = batch["labels"][:, width:]
    assert torch.equal(completion != -100, batch["attention_mask"][:, width:].bool())
    assert batch["prompt_mm_token_type_ids"].sum() == (batch["prompts"] == processor.image_token_id).sum()
    with pytest.raises(ValueError, match="batch example 1: the prompt has 1 image placeholder"):
        VisionDistillationCollator(processor)([rows[0], {**rows[1], "image": None}])
    broken = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "hi"}], "completion": "a"}] * 2
        + [{"prompt": [{"role": "user", "content": "hi"}], "completion": None}]
    )
    with pytest.raises(ValueError, match="dataset row 2"):
        validate_distillation_dataset(broken)


def test_distillation_example_runs_on_tiny_models(tmp_path):
    spec = importlib.util.spec_from_file_location("attention_distill", EXAMPLES / "attention_distill.py")
    example = importlib.util.module_from_spec(spec)
    sys.modules["attention_distill"] = example  # dataclasses look their module up while the class is built
    spec.loader.exec_module(example)
    _, args, _ = example.parse(["--output_dir", str(tmp_path)], use_cpu=True, bf16=False)
    assert (args.lmbda, args.attn_distill_coef, args.freeze_vision_tower) == (1.0, 0.5, True)
    assert args.teacher_model_init_kwargs["dtype"] == "bfloat16"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = example.main(
            [
                "--tiny",
                "--output_dir",
                str(tmp_path),
                "--max_steps",
                "2",
                "--max_new_tokens",
                "4",
                "--logging_steps",
                "1",
                "--disable_tqdm",
                "true",
            ]
        )
    teacher_layers = trainer.teacher_model.config.text_config.num_hidden_layers
    assert teacher_layers != trainer.model.config.text_config.num_hidden_layers
    assert len([h for h in trainer.state.log_history if "attention/distill_jsd" in h]) == 2
    assert (tmp_path / "model.safetensors").exists()


def test_one_student_and_one_teacher_forward_per_loss(tmp_path):
    trainer = _vlm_trainer(tmp_path, attn_distill_coef=1.0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with count_forwards(student=trainer.model, teacher=trainer.teacher_model) as calls:
        trainer.compute_loss(trainer.model, batch)
    assert calls == {"student": 1, "teacher": 1}


def test_distillation_overhead_benchmark_runs():
    spec = importlib.util.spec_from_file_location("distill_overhead", BENCHMARKS / "distill_overhead.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--repeats", "1", "--completion", "2", "--batch", "2"])
    assert result["gkd"] > 0 and result["gkd+attention"] > 0
    assert result["ratio"] == pytest.approx(result["gkd+attention"] / result["gkd"])


def test_freeze_vision_tower_option(tmp_path):
    trainer = _vlm_trainer(tmp_path, freeze_vision_tower=True)
    visual = [p for n, p in trainer.model.named_parameters() if n.startswith("model.visual.")]
    assert visual and not any(p.requires_grad for p in visual)
    assert any(isinstance(cb, DistributedChecksCallback) for cb in trainer.callback_handler.callbacks)
    assert all(p.requires_grad for n, p in trainer.model.named_parameters() if "language_model" in n)
