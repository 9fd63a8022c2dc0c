"""benchmarks/memory_budget.py against real modules: parameter counts, and the bytes autograd actually saves."""

import importlib.util
import subprocess
import sys

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from tests.testing_utils import ROOT
from trl_attention.losses import attention_policy, jsd

SCRIPT = ROOT / "benchmarks" / "memory_budget.py"
spec = importlib.util.spec_from_file_location("memory_budget", SCRIPT)
mb = importlib.util.module_from_spec(spec)
sys.modules["memory_budget"] = mb  # dataclasses resolve annotations through sys.modules
spec.loader.exec_module(mb)


def _config(m):
    t, v = m.text, m.vision
    half = t.head_dim // 2  # M-RoPE sections sum to half the head dim; [16, 24, 24] for the real models
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text = dict(
        vocab_size=t.vocab,
        hidden_size=t.hidden,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        num_key_value_heads=t.kv_heads,
        intermediate_size=t.intermediate,
        tie_word_embeddings=t.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": mrope},
    )
    vision = dict(
        depth=v.depth,
        hidden_size=v.hidden,
        intermediate_size=v.intermediate,
        out_hidden_size=v.out_hidden,
        num_heads=16,
        patch_size=v.patch,
        temporal_patch_size=v.temporal_patch,
        spatial_merge_size=v.merge,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=t.tie_embeddings)


SMALL = mb.Model(
    "small",
    mb.TextDims(vocab=300, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96),
    mb.VisionDims(depth=2, hidden=32, intermediate=48, out_hidden=64),
)


@pytest.mark.parametrize("model", [SMALL, mb.QWEN25_VL_7B, mb.QWEN25_VL_32B], ids=lambda m: m.name)
def test_parameter_counts_equal_the_instantiated_model(model):
    with torch.device("meta"):
        real = Qwen2_5_VLForConditionalGeneration(_config(model))
    total, trainable = mb.model_parameters(model)
    assert total == sum(p.numel() for p in real.parameters())
    assert total - trainable == sum(p.numel() for p in real.model.visual.parameters())


def test_zero_states_hand_computation():
    assert mb.zero_states(1000, 600, gpus=4, stage=2) == {"weights": 2000, "grads": 300, "optimizer": 1800}
    assert mb.zero_states(1000, 600, gpus=4, stage=3) == {"weights": 500, "grads": 300, "optimizer": 1800}
    t = mb.TextDims(vocab=10, hidden=8, layers=3, heads=2, kv_heads=1, intermediate=16)
    per_token = 20 * 8 + 8 * 16 + 4 * 4 + 4 * 2 + 8  # = 320
    assert mb.layer_activation_bytes(t) == per_token
    assert mb.activation_bytes(t, batch=2, length=5, checkpointing=False) == 10 * (3 * 320 + 16)
    assert mb.activation_bytes(t, batch=2, length=5, checkpointing=True) == 10 * (3 * 16 + 320 + 16)
    assert mb.capture_bytes(batch=2, completion=3, length=7, buffered_rows=4) == 16 * 42 + 4 * 84


class _SavedBytes:
    """Bytes autograd saves inside the block, each storage once, excluding the given tensors' storages."""

    def __init__(self, *exclude):
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages = {}

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.exclude:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self):
        return sum(self.storages.values())


@pytest.mark.parametrize("dims", [(64, 96, 4, 2), (96, 160, 6, 3), (128, 128, 8, 8)])
def test_layer_activation_formula_equals_what_autograd_saves(dims):
    hidden, intermediate, heads, kv_heads = dims
    t = mb.TextDims(vocab=300, hidden=hidden, layers=1, heads=heads, kv_heads=kv_heads, intermediate=intermediate)
    model = Qwen2_5_VLForConditionalGeneration(_config(mb.replace(SMALL, text=t))).to(torch.bfloat16)
    text = model.model.language_model
    layer, tokens = text.layers[0], 24
    x = torch.randn(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(tokens)[None].expand(3, 1, tokens)
    cos_sin = text.rotary_emb(x, positions)
    with _SavedBytes(x, *layer.parameters()) as saved:
        layer(x, attention_mask=None, position_embeddings=cos_sin, position_ids=positions[0])
    assert saved.total == tokens * (mb.layer_activation_bytes(t) + 4 * t.head_dim)  # + cos/sin, shared by layers


def test_loss_bytes_per_logit_equal_what_autograd_saves():
    from trl.experimental.gkd import GKDTrainer
    from trl.trainer.utils import selective_log_softmax

    gen = torch.Generator().manual_seed(0)
    shape = (2, 6, 50)
    student = torch.randn(shape, generator=gen).to(torch.bfloat16).requires_grad_()
    teacher = torch.randn(shape, generator=gen).to(torch.bfloat16)
    labels = torch.randint(0, 50, shape[:2], generator=gen)
    with _SavedBytes(student, teacher) as saved:
        GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=0.5, temperature=0.9)
    large = sum(n for n in saved.storages.values() if n >= student.numel())  # the rest is O(B*T)
    assert large == mb.GKD_LOSS_BYTES_PER_LOGIT * student.numel()
    with _SavedBytes(student) as saved:
        selective_log_softmax(student, labels)
    large = sum(n for n in saved.storages.values() if n >= student.numel())
    assert large == mb.GRPO_LOSS_BYTES_PER_LOGIT * student.numel()


def test_capture_bytes_equal_what_the_ral_loss_saves():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 8, 40, generator=gen), -1).requires_grad_()
    old = torch.softmax(torch.randn(2, 8, 40, generator=gen), -1)
    with _SavedBytes(probs, old) as saved:
        jsd(attention_policy(probs), attention_policy(old))
    large = sum(n for n in saved.storages.values() if n >= probs.numel())
    assert large == 12 * probs.numel()  # + 4 bytes for the captured rows themselves: capture_bytes' (4 + 12)
    assert mb.capture_bytes(2, 8, 40, buffered_rows=0) == (4 + 12) * probs.numel()


def test_script_prints_a_table_whose_totals_add_up():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    assert "Qwen2.5-VL-7B: 8.29B parameters" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| RAL") or line.startswith("| Dis")]
    assert len(rows) == 8
    for row in rows:
        values = [float(c) for c in row[3:]]
        assert abs(sum(values[:-1]) - values[-1]) <= 0.006 * len(values)  # two-decimal rounding
    recipe = mb.RECIPES[1]
    zero3 = mb.budget(recipe, gpus=8, stage=3, checkpointing=True)
    assert zero3["teacher/ref"] > 2 * 33e9 / 8  # the 32B teacher's bf16 weights, sharded 8 ways
    assert mb.budget(recipe, gpus=8, stage=2, checkpointing=True)["teacher/ref"] > 2 * 33e9  # replicated


def test_readme_table_is_the_scripts_output():
    readme = (SCRIPT.parents[1] / "docs" / "scale-out.md").read_text()
    assert mb.table() in readme and "python benchmarks/memory_budget.py" in readme
