"""RAL, Reinforced Attention Learning (arXiv 2602.04884): GRPO plus an advantage-weighted JSD between the policy's
final-layer attention and the rollout policy's. `AttentionGRPOTrainer` is a drop-in `trl.GRPOTrainer`.

    config.py     AttentionGRPOConfig (GRPOConfig + `arguments.RALArguments` + the teacher terms' fields)
    trainer.py    AttentionGRPOTrainer (the RAL term; SAYO rewards and teacher terms mixed in)
    scoring.py    the capture inside TRL's scoring forward (p_old, and the attention rewards read)
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "AttentionGRPOConfig": ".config",
    "AttentionGRPOTrainer": ".trainer",
    "RALArguments": ".arguments",
    "ScoringCaptureMixin": ".scoring",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
