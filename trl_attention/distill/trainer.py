"""On-policy attention distillation on top of TRL's GKD: `AttentionGKDTrainer` (docs/papers.md section 1).

loss = gkd_coef * L_GKD + attn_distill_coef * masked_mean_t JSD(p_student^t || p_teacher^t)

p_student and p_teacher are the head-averaged final-layer attention policies of the completion tokens, captured in
the student and teacher forwards GKD already runs (the teacher's under no_grad): no extra pass. With
`attn_distill_coef=0` and `gkd_coef=1` the trainer is GKDTrainer, bit for bit.

VLMs: TRL's GKD passes only `input_ids`/`attention_mask` to the models. Here the processor's tensors
(`pixel_values`, `image_grid_thw`, `mm_token_type_ids`) reach the student and the teacher in the off-policy forward
and in on-policy generation (`lmbda`), and `VisionDistillationCollator` batches conversational image datasets.
Video rows (`video` / `videos` columns) add `pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts` and video
token types (2) to the same inputs; their rows are checked at construction (`trl_attention.video`).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from ..capture import capture_attention, unwrap_model, visual_token_ids
from ..checkpointing import ResumeMixin
from ..distributed import DistributedChecksCallback, freeze_vision_tower
from ..loading import check_local_path
from ..papers import model_card_paper
from ..trl_internals import GKDTrainer, log_global_masked_mean
from ..video.arguments import video_arguments
from ..video.rows import VideoError, check_trainer_videos, check_video_model
from .collator import VisionDistillationCollator, is_processor, validate_distillation_dataset
from .config import AttentionGKDConfig
from .losses import attention_distill_per_token, extra_forward_kwargs
from .teacher import check_teacher, load_teacher

__all__ = ["AttentionGKDTrainer", "completion_rows", "multimodal_kwargs"]

logger = logging.getLogger(__name__)

# Batch keys forwarded to the models as they are (the image and video tensors).
_PASSTHROUGH_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def completion_rows(labels: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(C, mask): the number of trailing rows that hold every completion token (labels != -100), and which of those
    rows are completion tokens, (B, C). Works for left- and right-padded layouts."""
    is_completion = labels != -100
    length = labels.size(1)
    has_any = is_completion.any(dim=1)
    if not bool(has_any.any()):
        return 1, is_completion[:, -1:].float()
    first = torch.where(has_any, is_completion.int().argmax(dim=1), torch.full_like(has_any, length, dtype=torch.long))
    rows = length - int(first.min())
    return rows, is_completion[:, length - rows :].float()


class _GenerateWithExtras:
    """A model whose `generate` also receives the batch's image / video tensors (GKD generates from `prompts`
    only)."""

    def __init__(self, model, extras: dict):
        self._model, self._extras = model, extras

    def generate(self, **kwargs):
        return self._model.generate(**{**self._extras, **kwargs})


def multimodal_kwargs(inputs: dict, input_ids: torch.Tensor | None = None) -> dict:
    """Image / video tensors of the batch, with `mm_token_type_ids` spanning `input_ids` (prompt types, then
    zeros: completions hold no placeholder, generation suppresses them)."""
    extras = {key: inputs[key] for key in _PASSTHROUGH_KEYS if inputs.get(key) is not None}
    prompt_types = inputs.get("prompt_mm_token_type_ids")
    if prompt_types is None:
        return extras
    if input_ids is None:
        extras["mm_token_type_ids"] = prompt_types
        return extras
    prompts, prompt_mask = inputs["prompts"], inputs["prompt_attention_mask"].bool()
    width = prompts.size(1)
    if input_ids.size(1) < width or not bool((input_ids[:, :width] == prompts)[prompt_mask].all()):
        raise ValueError(
            "the batch's input_ids do not start with its `prompts`, so the image token types cannot be aligned: "
            "lay batches out as [left-padded prompt | completion], as VisionDistillationCollator does"
        )
    extras["mm_token_type_ids"] = torch.cat(
        [prompt_types, prompt_types.new_zeros(prompt_types.size(0), input_ids.size(1) - width)], dim=1
    )
    return extras


class AttentionGKDTrainer(ResumeMixin, GKDTrainer):
    """[`~trl.experimental.gkd.GKDTrainer`] plus on-policy attention distillation (RAL paper, arXiv 2602.04884) and
    VLM inputs.

    Same constructor as GKDTrainer; configure with [`AttentionGKDConfig`] (`attn_distill_coef=0`, `gkd_coef=1` is
    GKD exactly). For VLMs pass the processor as `processing_class`; conversational image datasets (`messages` or
    `prompt` + `completion`, with `images` or `image`, videos in `video` or `videos`) are batched by
    `VisionDistillationCollator`.

    Example:

    ```python
    from trl_attention import AttentionGKDConfig, AttentionGKDTrainer
    from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset

    student, processor = build_tiny_vlm(seed=0)
    teacher, _ = build_tiny_vlm(seed=1, num_hidden_layers=6, hidden_size=96, intermediate_size=192,
                                num_attention_heads=6, num_key_value_heads=3)
    data = make_grounding_dataset(8).map(lambda row: {"completion": row["answer"]})
    args = AttentionGKDConfig(output_dir="out", attn_distill_coef=0.5, lmbda=1.0, max_new_tokens=8, max_steps=2,
                              per_device_train_batch_size=2, use_cpu=True, report_to=[])
    trainer = AttentionGKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                                  processing_class=processor)
    trainer.train()
    ```
    """

    _tag_names = [*GKDTrainer._tag_names, "trl-attention", "attention-distillation"]
    _name = "AttentionGKD"
    _paper = model_card_paper(["ral"], GKDTrainer._paper)

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args=None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *more,
        **kwargs,
    ):
        if args is None:
            args = AttentionGKDConfig(output_dir="tmp_trainer")
        check_local_path("model", model)  # a missing local path: named, not transformers' repo-id error
        check_local_path("teacher_model", teacher_model)
        vision = is_processor(processing_class)
        if vision:
            for dataset in (
                train_dataset,
                *(eval_dataset.values() if isinstance(eval_dataset, dict) else [eval_dataset]),
            ):
                if dataset is not None:
                    validate_distillation_dataset(dataset, processing_class, getattr(args, "validation_rows", 256))
            if data_collator is None:
                data_collator = VisionDistillationCollator(
                    processing_class, max_length=args.max_length, video_args=video_arguments(args)
                )
        if isinstance(teacher_model, str) and vision:  # TRL would load a VLM teacher as a causal LM
            teacher_model = load_teacher(teacher_model, args.teacher_model_init_kwargs, args.trust_remote_code)
            args.teacher_model_init_kwargs = None
        # GKDTrainer reads `processing_class.pad_token_id`, which processors do not have: lend it for the call.
        lend = vision and not hasattr(processing_class, "pad_token_id")
        if lend:
            processing_class.pad_token_id = processing_class.tokenizer.pad_token_id
        try:
            super().__init__(
                model,
                teacher_model,
                args,
                data_collator,
                train_dataset,
                eval_dataset,
                processing_class,
                *more,
                **kwargs,
            )
        finally:
            if lend:
                del processing_class.pad_token_id
        self._init_video(eval_dataset)
        if getattr(self.args, "freeze_vision_tower", False):  # the optimizer is built later, in train()
            freeze_vision_tower(self.model)
        self.attn_distill_coef = float(getattr(self.args, "attn_distill_coef", AttentionGKDConfig.attn_distill_coef))
        self.gkd_coef = float(getattr(self.args, "gkd_coef", AttentionGKDConfig.gkd_coef))
        self.attn_layer = int(getattr(self.args, "attn_layer", -1))
        self.teacher_attn_layer = int(getattr(self.args, "teacher_attn_layer", -1))
        self.add_callback(DistributedChecksCallback(self))  # DeepSpeed batch values, ZeRO-3 gathering, teacher size
        if vision:  # a sampled image placeholder would not match the image features (TRL's GRPO does the same)
            placeholders = visual_token_ids(self.model)
            self.generation_kwargs["suppress_tokens"] = placeholders
            self.generation_config.suppress_tokens = placeholders
        check_teacher(
            self.model,
            self.teacher_model,
            processing_class,
            self.attn_distill_coef != 0,
            self.attn_layer,
            self.teacher_attn_layer,
        )

    def _init_video(self, eval_dataset) -> None:
        """Check video datasets now, not at step 1: rows (prompt parts, files, frame counts), student, teacher and
        processor (`VideoError` naming the row or model); point the collator at the model's placeholder tokens."""
        self.video_args = video_arguments(self.args)
        self.has_video = check_trainer_videos(self, self.video_args, self.train_dataset, eval_dataset)
        if not self.has_video:
            return
        try:
            check_video_model(self.teacher_model, self.processing_class)
        except VideoError as err:
            raise VideoError(f"teacher_model: {err}") from None
        if isinstance(self.data_collator, VisionDistillationCollator):
            config = unwrap_model(self.model).config
            tokenizer = self.processing_class.tokenizer
            image, video = tokenizer.convert_ids_to_tokens([config.image_token_id, config.video_token_id])
            self.data_collator.image_token = self.data_collator.image_token or image
            self.data_collator.video_token = self.data_collator.video_token or video

    def capture_layers(self) -> dict:
        """{"model": attn_layer, "teacher": teacher_attn_layer} when attention is distilled, else {} (the pre-flight
        checks look only at captured models)."""
        if self.attn_distill_coef == 0:
            return {}
        return {"model": self.attn_layer, "teacher": self.teacher_attn_layer}

    # -- on-policy generation ---------------------------------------------------------------------------------------
    @staticmethod
    def generate_on_policy_outputs(model, inputs, generation_config, *args, **kwargs):
        """GKD's static generation (TRL calls it as `self.generate_on_policy_outputs`, its tests on the class), with
        the batch's image / video tensors passed to `generate`; further arguments go to TRL's as they are."""
        extras = multimodal_kwargs(inputs)
        return GKDTrainer.generate_on_policy_outputs(
            _GenerateWithExtras(model, extras) if extras else model, inputs, generation_config, *args, **kwargs
        )

    # -- the loss -------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extras = multimodal_kwargs(inputs, inputs["input_ids"])
        if self.attn_distill_coef == 0 and self.gkd_coef == 1.0 and not extras:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with contextlib.ExitStack() as stack:
            for module in (model, self.teacher_model):
                stack.enter_context(extra_forward_kwargs(module, extras))
            if self.attn_distill_coef != 0:
                rows, row_mask = completion_rows(inputs["labels"])
                student = stack.enter_context(capture_attention(model, num_rows=rows, layer=self.attn_layer))
                teacher = stack.enter_context(
                    capture_attention(self.teacher_model, num_rows=rows, layer=self.teacher_attn_layer)
                )
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        total = loss if self.gkd_coef == 1.0 else self.gkd_coef * loss
        if self.attn_distill_coef != 0:
            per_token = attention_distill_per_token(student.probs, teacher.probs)  # asserts equal shapes
            row_mask = row_mask.to(per_token.device)
            # Normalised like GKD's token term: by the global token count when the Trainer provides it.
            denominator = num_items_in_batch if num_items_in_batch is not None else row_mask.sum().clamp(min=1.0)
            attn_loss = (per_token * row_mask).sum() / torch.as_tensor(denominator, device=per_token.device)
            total = total + self.attn_distill_coef * attn_loss.to(total.dtype)
            log_global_masked_mean(self, "attention/distill_jsd", per_token.detach(), row_mask)
        return (total, outputs) if return_outputs else total
