"""trl_attention: train and steer multimodal LLMs on where they look, as drop-in TRL trainers and tools."""

__version__ = "0.1.0"

from .capture import AttentionCapture, CaptureError, capture_attention, find_decoder_layers
from .losses import attention_entropy, attention_policy, jsd
from .ral import AttentionGRPOConfig, AttentionGRPOTrainer

__all__ = [
    "AttentionCapture",
    "AttentionGRPOConfig",
    "AttentionGRPOTrainer",
    "CaptureError",
    "attention_entropy",
    "attention_policy",
    "capture_attention",
    "find_decoder_layers",
    "jsd",
]
