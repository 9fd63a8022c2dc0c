"""Tests for the offline tiny Qwen models, tokenizer, processor and synthetic grounding data."""

import string

import numpy as np
import pytest
import torch
from PIL import Image

from trl_attention.tiny import (
    BACKGROUND,
    COLORS,
    SHAPES,
    SPECIAL_TOKENS,
    box_to_token_mask,
    build_tiny_lm,
    build_tiny_vlm,
    build_tokenizer,
    make_grounding_dataset,
    save_tiny_lm,
    save_tiny_vlm,
)

USER_MSG = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]}]
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def vlm():
    return build_tiny_vlm(seed=0)


@pytest.fixture(scope="module")
def data():
    return make_grounding_dataset(24, seed=0)


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _batch(processor, rows):
    texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    return processor(text=texts, images=[r["image"] for r in rows], return_tensors="pt", padding=True)


# ----------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_specials():
    tok = build_tokenizer()
    assert 300 <= len(tok) <= 1100
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert (tok.pad_token, tok.eos_token) == ("<|endoftext|>", "<|im_end|>")
    assert tok.image_token == "<|image_pad|>" and tok.image_token_id == 5
    for text in [string.printable, "What colour is the circle?", "x  y\t\n 0123 4567", "\x00\x7f~", "naïve 日本"]:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    # Domain words are single tokens; special tokens are never split.
    assert tok.tokenize("What colour is the circle?") == ["What", "Ġcolour", "Ġis", "Ġthe", "Ġcircle", "?"]
    assert tok("<|im_start|><|image_pad|><|im_end|>")["input_ids"] == [1, 5, 2]
    assert build_tokenizer().backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_chat_template():
    tok = build_tokenizer()
    out = tok.apply_chat_template(USER_MSG, tokenize=False, add_generation_prompt=True)
    assert out == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{VISION}What colour is the circle?<|im_end|>\n<|im_start|>assistant\n"
    )
    conv = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "red"},
    ]
    out = tok.apply_chat_template(conv, tokenize=False)
    assert out == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    )
    # HF datasets add "text": None to image parts; the template must still render the placeholder.
    parts = [{"type": "image", "text": None}, {"type": "text", "text": "q"}]
    out = tok.apply_chat_template([{"role": "user", "content": parts}], tokenize=False)
    assert f"user\n{VISION}q<|im_end|>" in out


# ----------------------------------------------------------------------------------------------- VLM


def test_processor_image_token_count(vlm):
    model, processor = vlm
    for size in (112, 100):  # 100 px is resized to the nearest multiple of 28, i.e. 112
        image = Image.new("RGB", (size, size), (10, 200, 30))
        text = processor.apply_chat_template(USER_MSG, add_generation_prompt=True, tokenize=False)
        assert VISION in text
        inputs = processor(text=[text], images=[image], return_tensors="pt", padding=True)
        assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
        n_pad = int((inputs["input_ids"] == processor.tokenizer.image_token_id).sum())
        assert n_pad == 1 * 8 * 8 // 4 == 16
        assert inputs["pixel_values"].shape == (64, 3 * 2 * 14 * 14)
        assert torch.equal(inputs["mm_token_type_ids"] == 1, inputs["input_ids"] == model.config.image_token_id)


def test_vlm_config_and_forward(vlm, data):
    model, processor = vlm
    cfg = model.config
    assert (cfg.text_config.num_attention_heads, cfg.text_config.num_key_value_heads) == (4, 2)
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size == 64
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == 64 // 4 // 2
    assert cfg.text_config.vocab_size == len(processor.tokenizer)
    assert next(model.parameters()).dtype == torch.float32
    inputs = _batch(processor, [data[0], data[1], data[2]])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (3, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    length = inputs["input_ids"].shape[1]
    assert length < out.shape[1] <= length + 8
    assert torch.equal(out[:, :length], inputs["input_ids"])


def test_trl_style_message_path(vlm, data):
    """GRPOTrainer fills the {"type": "image"} placeholder and tokenizes via processor.apply_chat_template."""
    from trl.data_utils import prepare_multimodal_messages

    _, processor = vlm
    row = data[0]
    messages = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
    out = processor.apply_chat_template(
        [messages], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert out["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((out["input_ids"] == processor.tokenizer.image_token_id).sum()) == 16


def test_overrides_and_eager_attention(data):
    model, processor = build_tiny_vlm(
        attn_implementation="eager", num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4
    )
    tc = model.config.text_config
    assert (tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads) == (2, 8, 4)
    assert sum(tc.rope_parameters["mrope_section"]) == 64 // 8 // 2
    assert tc._attn_implementation == "eager"
    inputs = _batch(processor, [data[0]])
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    length = inputs["input_ids"].shape[1]
    assert len(out.attentions) == 2 and out.attentions[0].shape == (1, 8, length, length)
    assert torch.allclose(out.attentions[1].sum(-1), torch.ones(1, 8, length), atol=1e-5)


def test_same_seed_same_weights():
    a, _ = build_tiny_vlm(seed=3)
    b, _ = build_tiny_vlm(seed=3)
    c, _ = build_tiny_vlm(seed=4)
    assert _state_equal(a, b) and not _state_equal(a, c)
    la, _ = build_tiny_lm(seed=3)
    lb, _ = build_tiny_lm(seed=3)
    assert _state_equal(la, lb)
    state = torch.random.get_rng_state()
    build_tiny_lm(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched


def test_save_load_vlm(tmp_path, vlm, data):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    model, processor = vlm
    path = save_tiny_vlm(tmp_path / "vlm", seed=0)
    loaded = AutoModelForImageTextToText.from_pretrained(path)
    loaded_proc = AutoProcessor.from_pretrained(path)
    assert type(loaded) is type(model) and loaded.dtype == torch.float32
    assert type(loaded_proc) is type(processor)
    assert isinstance(loaded_proc.image_processor, Qwen2VLImageProcessorPil)
    assert not hasattr(loaded_proc, "video_processor")
    assert _state_equal(model, loaded)
    rows = [data[3], data[4]]
    inputs, loaded_inputs = _batch(processor, rows), _batch(loaded_proc, rows)
    assert inputs.keys() == loaded_inputs.keys()
    assert all(torch.equal(inputs[k], loaded_inputs[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**loaded_inputs).logits)


def test_save_load_lm(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = build_tiny_lm(seed=0)
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    path = save_tiny_lm(tmp_path / "lm", seed=0)
    loaded, loaded_tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert _state_equal(model, loaded)
    texts = ["What colour is the circle? 1234", "It is red."]
    inputs = tok(texts, return_tensors="pt", padding=True)
    loaded_inputs = loaded_tok(texts, return_tensors="pt", padding=True)
    assert torch.equal(inputs["input_ids"], loaded_inputs["input_ids"])
    assert loaded_tok.chat_template == tok.chat_template
    with torch.no_grad():
        logits = model(**inputs).logits
        assert torch.equal(logits, loaded(**loaded_inputs).logits)
    assert logits.shape == (2, inputs["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------------------------- dataset


def test_dataset_deterministic():
    a, b, c = make_grounding_dataset(8, seed=7), make_grounding_dataset(8, seed=7), make_grounding_dataset(8, seed=8)
    for col in ("prompt", "answer", "box", "target_shape", "target_color"):
        assert a[col] == b[col]
    assert all(np.array_equal(np.array(x), np.array(y)) for x, y in zip(a["image"], b["image"]))
    assert a["box"] != c["box"]


def test_dataset_content(data):
    assert set(data.column_names) == {
        "prompt",
        "image",
        "answer",
        "solution",
        "box",
        "boxes",
        "target_shape",
        "target_color",
    }
    assert all(row["boxes"] == [[row["box"]]] and row["solution"] == row["answer"] for row in data)
    palette = {c: np.array(v) for c, v in COLORS.items()}
    for row in data:
        image = row["image"]
        assert image.mode == "RGB" and image.size == (112, 112)
        pixels = np.array(image)
        assert (pixels[0, 0] == BACKGROUND).all() or any((pixels[0, 0] == v).all() for v in palette.values())
        x0, y0, x1, y1 = row["box"]
        assert 0 <= x0 < x1 <= 112 and 0 <= y0 < y1 <= 112
        assert row["target_shape"] in SHAPES and row["target_color"] in COLORS
        # Box centre has the target colour, and the box is exactly the extent of the target's pixels.
        assert (pixels[(y0 + y1) // 2, (x0 + x1) // 2] == palette[row["target_color"]]).all()
        ys, xs = np.nonzero((pixels == palette[row["target_color"]]).all(-1))
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [x0, y0, x1, y1]
        n_colours = sum(bool((pixels == v).all(-1).any()) for v in palette.values())
        assert 1 <= n_colours <= 3
        (message,) = row["prompt"]
        assert message["role"] == "user" and message["content"][0]["type"] == "image"
        question = message["content"][1]["text"]
        if row["answer"] in COLORS:
            assert row["answer"] == row["target_color"] and question == f"What colour is the {row['target_shape']}?"
        else:
            assert row["answer"] == row["target_shape"]
            assert question == f"What shape is the {row['target_color']} object?"
    assert len(set(data["answer"])) > 3


def test_default_dataset_is_unchanged_by_the_grid_options():
    # Pinned from the implementation before `layout` etc. existed: datasets built with the defaults stay the same.
    rows = make_grounding_dataset(16, seed=5)
    assert rows["box"][:3] == [[9, 17, 34, 42], [26, 27, 46, 47], [25, 49, 50, 74]]
    assert rows["answer"][:3] == ["square", "square", "circle"]
    assert all(len(row["prompt"]) == 1 for row in rows)


def _extents(pixels):
    """{colour: [x0, y0, x1, y1]} of every palette colour present in the image."""
    out = {}
    for name, rgb in COLORS.items():
        ys, xs = np.nonzero((pixels == np.array(rgb)).all(-1))
        if len(xs):
            out[name] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return out


def test_grid_layout_objects_own_their_2x2_token_slots(vlm):
    _, processor = vlm
    rows = make_grounding_dataset(
        40, seed=3, image_size=168, layout="grid", questions="colour", min_shapes=2, max_shapes=3, system_prompt=""
    )
    grid = [1, 12, 12]  # 168 px -> 12x12 patches -> 6x6 merged tokens of 28 px
    for row in rows:
        objects = _extents(np.array(row["image"]))
        assert 2 <= len(objects) <= 3 and row["answer"] in COLORS and row["answer"] == row["target_color"]
        assert objects[row["target_color"]] == row["box"]
        masks = [box_to_token_mask(box, 168, grid).reshape(6, 6) for box in objects.values()]
        for mask in masks:  # exactly one aligned 2x2 block of tokens
            ys, xs = np.nonzero(mask.numpy())
            assert mask.sum() == 4 and ys.min() % 2 == 0 and xs.min() % 2 == 0
            assert ys.max() - ys.min() == 1 and xs.max() - xs.min() == 1
        assert sum(masks).max() == 1  # no token shared by two objects
        system, user = row["prompt"]
        assert system["role"] == "system" and system["content"][0]["text"] == ""
        assert user["content"][1]["text"] == f"What colour is the {row['target_shape']}?"
    text = processor.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n") and "helpful" not in text
    assert {len(_extents(np.array(r["image"]))) for r in rows} == {2, 3}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layout="grid", image_size=140), "multiple of 28 \\* object_cells = 56"),
        (dict(layout="grid", image_size=112, object_cells=4, min_shapes=2), "do not fit the 1x1 grid"),
        (dict(layout="rows"), "layout must be"),
        (dict(questions="size"), "questions 'both'"),
        (dict(max_shapes=4), "max_shapes <= 3"),
        (dict(layout="grid", object_cells=0), "must be >= 1"),
        (dict(object_cells=2), "applies to layout='grid' only"),
        (dict(min_shapes=3, max_shapes=2), "min_shapes <= max_shapes"),
    ],
)
def test_dataset_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_grounding_dataset(4, **kwargs)


# ----------------------------------------------------------------------------------------------- box -> tokens


def test_box_to_token_mask_hand_worked():
    grid = [1, 8, 8]  # 112 px image -> 8x8 patches -> 4x4 merged tokens of 28 px

    def hits(box, image_size=112, row=grid):
        return torch.nonzero(box_to_token_mask(box, image_size, row)).flatten().tolist()

    # x in [30, 57) touches columns 1 (28..56) and 2 (56..84); y in [0, 20) only row 0.
    assert hits([30, 0, 57, 20]) == [1, 2]
    # Columns 1-3 and rows 2-3: tokens 9, 10, 11, 13, 14, 15.
    assert hits([50, 60, 90, 100]) == [9, 10, 11, 13, 14, 15]
    # 100 px original is resized to 112: [0, 25) scales to [0, 28), which ends exactly at the cell border.
    assert hits([0, 0, 25, 25], image_size=100) == [0]
    assert hits([0, 0, 26, 26], image_size=100) == [0, 1, 4, 5]
    # Non-square (width, height) image and grid_t > 1: mask is repeated per temporal slice.
    mask = box_to_token_mask([112, 0, 224, 28], (224, 112), torch.tensor([2, 8, 16]))
    assert mask.shape == (2 * 4 * 8,) and mask.dtype == torch.bool
    assert torch.nonzero(mask).flatten().tolist() == [4, 5, 6, 7, 36, 37, 38, 39]


def test_box_to_token_mask_matches_processor_layout(vlm):
    """Paint one 28 px cell; the visual tokens whose patches changed must be exactly the mask's tokens."""
    _, processor = vlm
    box = [56, 28, 84, 56]  # row 1, column 2 -> token 6
    image = Image.new("RGB", (112, 112), BACKGROUND)
    image.paste(COLORS["red"], box)
    plain = Image.new("RGB", (112, 112), BACKGROUND)
    feats = processor.image_processor(images=[image, plain], return_tensors="pt")
    per_token = feats["pixel_values"].reshape(2, 16, 4, -1)  # (image, merged token, 2x2 patches, features)
    changed = (per_token[0] - per_token[1]).abs().amax(dim=(1, 2)) > 1e-3
    mask = box_to_token_mask(box, 112, feats["image_grid_thw"][0])
    assert torch.nonzero(mask).flatten().tolist() == [6]
    assert torch.equal(changed, mask)
