"""On-policy attention distillation (RAL paper, arXiv 2602.04884, section "On-policy attention distillation"):
teacher attention -> student attention on the student's own rollouts.

    config.py        AttentionGKDConfig (GKDConfig + `arguments.AttentionDistillArguments`)
    trainer.py       AttentionGKDTrainer, on top of TRL's GKDTrainer
    grpo_term.py     the teacher terms of AttentionGRPOTrainer (mu * L_GKD + gamma * L_AttnDistill)
    teacher.py       loading, checking and preparing the teacher
    tokenization.py  the student and the teacher must tokenise identically
    losses.py        attention JSD between captures, GKD's token JSD, the student's hidden states
    collator.py      VisionDistillationCollator for conversational image datasets
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "AttentionDistillArguments": ".arguments",
    "AttentionGKDConfig": ".config",
    "AttentionGKDTrainer": ".trainer",
    "GRPOTeacherArguments": ".arguments",
    "GRPOTeacherMixin": ".grpo_term",
    "TokenizationMismatchError": ".tokenization",
    "VisionDistillationCollator": ".collator",
    "attention_distill_per_token": ".losses",
    "backbone_hidden_states": ".losses",
    "check_same_tokenization": ".tokenization",
    "check_teacher": ".teacher",
    "completion_rows": ".trainer",
    "extra_forward_kwargs": ".losses",
    "is_processor": ".collator",
    "load_pretrained": "..loading",
    "load_teacher": ".teacher",
    "prepare_teacher": ".teacher",
    "token_generalized_jsd": ".losses",
    "validate_distillation_dataset": ".collator",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
