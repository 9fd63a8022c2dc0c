"""trl_attention: train and steer multimodal LLMs on where they look, as drop-in TRL trainers and tools."""

__version__ = "0.1.0"

from .capture import AttentionCapture, CaptureError, capture_attention, find_decoder_layers
from .gkd import AttentionGKDConfig, AttentionGKDTrainer
from .losses import attention_entropy, attention_policy, jsd
from .ral import AttentionGRPOConfig, AttentionGRPOTrainer
from .regions import region_token_indices
from .rewards import CompletionAttention, RegionAttentionReward, attention_reward, region_attention_score

__all__ = [
    "AttentionCapture",
    "AttentionGKDConfig",
    "AttentionGKDTrainer",
    "AttentionGRPOConfig",
    "AttentionGRPOTrainer",
    "CaptureError",
    "CompletionAttention",
    "RegionAttentionReward",
    "attention_entropy",
    "attention_policy",
    "attention_reward",
    "capture_attention",
    "find_decoder_layers",
    "jsd",
    "region_attention_score",
    "region_token_indices",
]
