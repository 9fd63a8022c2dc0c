"""SAYO region-attention reward and the recipe's text rewards: hand computations, trainer plumbing, bad input."""

import math
import warnings

import pytest
import torch
from trl import GRPOTrainer

from tests.testing_utils import trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, CaptureError
from trl_attention.rewards import accuracy_reward
from trl_attention.sayo import (
    CompletionAttention,
    RegionAttentionReward,
    attention_reward,
    format_reward,
    region_attention_score,
)
from trl_attention.visual.regions import region_token_indices
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset


def test_score_hand_computation_and_variants():
    attn = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    image = torch.tensor([False, True, True, True])
    region = torch.tensor([False, False, False, True])
    rows = torch.tensor([True, False, True])
    a = (0.4 + 0.25) / 2
    v = (0.2 + 0.3 + 0.4 + 0.25 * 3) / 6
    expected = math.tanh(math.log((a + 1e-8) / (v + 1e-8)))
    assert region_attention_score(attn, region, image, rows).item() == pytest.approx(expected, abs=1e-6)
    assert region_attention_score(attn, region, image, rows, "sigmoid").item() == pytest.approx(
        (1 + expected) / 2, abs=1e-6
    )
    uniform = torch.full((2, 4), 0.25)
    assert region_attention_score(uniform, region, image).item() == pytest.approx(0.0, abs=1e-7)  # a == v
    with pytest.raises(ValueError, match="outside image_mask"):
        region_attention_score(attn, torch.tensor([True, False, False, False]), image)
    with pytest.raises(ValueError, match="no completion token"):
        region_attention_score(attn, region, image, torch.zeros(3, dtype=torch.bool))


def test_top_entropy_selection():
    reward = RegionAttentionReward(top_entropy_fraction=0.3)
    mask = reward.select_tokens(torch.tensor([0.1, 2.0, 0.5, 3.0, 0.2, 0.0, 1.0, 0.3, 0.4, 0.6]))
    assert torch.nonzero(mask).flatten().tolist() == [1, 3, 6]  # ceil(0.3 * 10) = 3 highest
    assert RegionAttentionReward(top_entropy_fraction=0.3).select_tokens(torch.tensor([1.0])).tolist() == [True]


def _item(rows, positions, grids, entropies=None):
    return CompletionAttention(
        rows=rows, image_positions=positions, image_grids=grids, entropies=entropies, merge_size=2, prompt_length=0
    )


def test_reward_reads_boxes_per_image_and_counts_skips():
    image = [type("Img", (), {"size": (56, 56)})()]  # 2 x 2 token grid of 28 px cells
    rows = torch.zeros(2, 8)
    rows[:, 3] = 0.5  # token 0 of the image block (positions 3..6)
    rows[:, 0] = 0.5
    item = _item(rows, [torch.arange(3, 7)], [(1, 4, 4)], torch.tensor([1.0, 0.5]))
    logged = {}
    scores = RegionAttentionReward()(
        completions=["a", "b", "c", "d"],
        attention=[item, item, item, None],
        image=image * 4,
        boxes=[[[[0, 0, 10, 10]]], [[[28, 28, 56, 56]]], None, [[[0, 0, 10, 10]]]],
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    inside = math.tanh(math.log((0.5 + 1e-8) / (0.5 / 4 + 1e-8)))
    outside = math.tanh(math.log(1e-8 / (0.5 / 4 + 1e-8)))
    assert scores[0] == pytest.approx(inside, abs=1e-6) and scores[1] == pytest.approx(outside, abs=1e-6)
    assert scores[2] is None and scores[3] is None
    assert logged["sayo/no_box"] == 1 and logged["sayo/truncated"] == 1 and logged["sayo/clipped_boxes"] == 0
    clipped = RegionAttentionReward()(
        completions=["a"],
        attention=[item],
        image=image,
        boxes=[[[[-5, -5, 10, 10]]]],
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert clipped[0] == pytest.approx(inside, abs=1e-6) and logged["sayo/clipped_boxes"] == 1


def test_text_rewards():
    ids = [[0] * 80, [0] * 30, [0] * 200, [0] * 80]
    completions = ["<answer>red</answer>", "<answer>x</answer>", "<answer>y</answer>", "no tag"]
    assert format_reward(completions, completion_ids=ids) == pytest.approx([1.0, 0.6 * 30 / 60, 0.6 * 100 / 200, 0.0])
    conversational = [[{"role": "assistant", "content": "<answer> Red. </answer>"}], "the answer is red", "red"]
    assert accuracy_reward(conversational, solution=["red", "red", None]) == [1.0, 0.0, None]


def test_plain_trl_trainer_gets_a_clear_error():
    with pytest.raises(RuntimeError, match="AttentionGRPOTrainer"):
        RegionAttentionReward()(completions=["x"], boxes=[[[[0, 0, 1, 1]]]])


def _trainer(tmp_path, dataset, rewards, **overrides):
    model, processor = build_tiny_vlm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, **{"max_steps": 2, "attn_coef": 0.0, **overrides})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionGRPOTrainer(
            model=model, reward_funcs=rewards, args=args, train_dataset=dataset, processing_class=processor
        )


@pytest.mark.parametrize(
    "bad_box, message", [([30, 10, 20, 40], "row 1.*x2 <= x1"), ([200, 200, 300, 300], "row 1.*outside")]
)
def test_bad_boxes_fail_at_construction_naming_the_row(tmp_path, bad_box, message):
    dataset = make_grounding_dataset(3, seed=0)
    boxes = [row["boxes"] for row in dataset]
    boxes[1] = [[bad_box]]
    dataset = dataset.remove_columns("boxes").add_column("boxes", boxes)
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, dataset, [RegionAttentionReward()])


def test_trainer_without_capturable_attention_fails_at_construction(tmp_path):
    model, processor = build_tiny_vlm(seed=0)
    model.config.text_config._attn_implementation_internal = "no_such_kernel"  # flex, flash, ...: capturable
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0)
    with pytest.raises(CaptureError, match="no_such_kernel"):
        AttentionGRPOTrainer(
            model=model,
            reward_funcs=[RegionAttentionReward()],
            args=args,
            processing_class=processor,
            train_dataset=make_grounding_dataset(4),
        )


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_one_scoring_forward_per_generation_batch(tmp_path, monkeypatch, num_iterations):
    seen = []

    @attention_reward
    def second(completions, attention, **kwargs):
        seen.append(attention)
        return [0.0] * len(completions)

    calls = []
    original = GRPOTrainer._get_per_token_logps_and_entropies
    monkeypatch.setattr(
        GRPOTrainer,
        "_get_per_token_logps_and_entropies",
        lambda self, *a, **k: calls.append(torch.is_grad_enabled()) or original(self, *a, **k),
    )
    trainer = _trainer(
        tmp_path,
        make_grounding_dataset(8),
        [RegionAttentionReward(), second, format_reward],
        num_iterations=num_iterations,
        attn_coef=1.0,
        max_steps=2,
    )
    trainer.train()
    no_grad = [c for c in calls if not c]
    generations = 2 if num_iterations == 1 else 1  # 2 optimiser steps
    assert len(no_grad) == generations  # one scoring forward per generation batch, for 2 attention rewards + RAL
    assert len(seen) == generations and all(len(batch) == 4 for batch in seen)
    item = seen[0][0]
    assert item.rows.shape[0] == item.entropies.shape[0] > 0 and len(item.image_positions[0]) == 16
    torch.testing.assert_close(item.rows.sum(-1), torch.ones(item.rows.shape[0]), atol=1e-5, rtol=0)


def test_reward_prefers_boxes_where_the_policy_looks(tmp_path):
    """On the tiny VLM: the attention handed to rewards equals eager attention recomputed independently, and a box
    on the most-attended visual token scores above a box on the least-attended one."""
    dataset = make_grounding_dataset(4, seed=3)
    captured = {}

    @attention_reward
    def spy(completions, attention, completion_ids, image, **kwargs):
        captured.setdefault("batch", (attention, completion_ids, image))
        return [0.0] * len(completions)

    trainer = _trainer(tmp_path, dataset, [spy], max_steps=1)
    trainer.train()
    attention, completion_ids, images = captured["batch"]
    item = attention[0]
    # independent reference: the initial weights (the rollout policy), eager attention, one unpadded sequence
    eager, processor = build_tiny_vlm(seed=0, attn_implementation="eager")
    prompt = next(row["prompt"] for row in dataset if row["image"].tobytes() == images[0].tobytes())
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[images[0]], return_tensors="pt")
    ids = torch.cat([inputs["input_ids"], torch.tensor([completion_ids[0]])], 1)
    mm = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(completion_ids[0]), dtype=torch.long)], 1)
    with torch.no_grad():
        out = eager(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=mm,
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
            output_attentions=True,
        )
    reference = out.attentions[-1].mean(1)[0, -len(completion_ids[0]) :]
    assert item.prompt_length == inputs["input_ids"].shape[1]
    torch.testing.assert_close(item.rows, reference, atol=1e-5, rtol=0)

    selected = RegionAttentionReward().select_tokens(item.entropies)
    per_token = item.rows[selected][:, item.image_positions[0]].mean(0)  # (16,) mean attention per visual token
    size, cell = images[0].size, images[0].size[0] / 4
    boxes = {}
    for name, token in (("hot", int(per_token.argmax())), ("cold", int(per_token.argmin()))):
        r, c = divmod(token, 4)
        boxes[name] = [c * cell + 1, r * cell + 1, (c + 1) * cell - 1, (r + 1) * cell - 1]
        assert region_token_indices(boxes[name], size, item.image_grids[0]).tolist() == [token]
    reward = RegionAttentionReward()
    hot, cold = (
        reward(completions=["x"], attention=[item], image=[images[0]], boxes=[[[boxes[k]]]])[0]
        for k in ("hot", "cold")
    )
    assert hot > 0 > cold
    assert hot == pytest.approx(math.tanh(math.log((per_token.max() + 1e-8) / (per_token.mean() + 1e-8))), abs=1e-5)


def test_short_sayo_training_run_reports_region_share(tmp_path, capsys):
    """Honest report, not a claim: the region share logged by the reward over a short run on synthetic data."""
    trainer = _trainer(
        tmp_path,
        make_grounding_dataset(32, seed=1),
        [RegionAttentionReward(), accuracy_reward],
        max_steps=6,
        learning_rate=5e-3,
        reward_weights=[1.0, 1.0],
    )
    trainer.train()
    shares = [h["sayo/region_share"] for h in trainer.state.log_history if "sayo/region_share" in h]
    rewards = [
        h["rewards/region_attention/mean"] for h in trainer.state.log_history if "rewards/region_attention/mean" in h
    ]
    assert len(shares) == 6 and all(0 < s < 1 for s in shares) and all(-1 < r < 1 for r in rewards)
    with capsys.disabled():
        print(f"\n[sayo] region share of attention, first -> last step: {shares[0]:.4f} -> {shares[-1]:.4f}")


def test_split_ignores_image_ids_sampled_in_the_completion():
    """A random policy can sample <|image_pad|>; visual positions come from the prompt only."""
    from types import SimpleNamespace

    from trl_attention.sayo.attention import RewardAttentionMixin

    model, _ = build_tiny_vlm(seed=0)
    img = model.config.image_token_id
    prompt = [0, 0, 7, img, img, img, img, 8]  # two left pads, 4 image tokens (grid 1x4x4 -> 4 tokens)
    completion = [img, 9, 0]  # sampled image id, a token, right pad
    ids = torch.tensor([prompt + completion])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    probs = torch.rand(1, 3, 11)
    scoring = {
        "probs": probs,
        "input_ids": ids,
        "attention_mask": mask,
        "rows": 3,
        "entropies": torch.tensor([[1.0, 2.0, 0.0]]),
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
        "num_images": [1],
    }
    (item,) = RewardAttentionMixin._per_completion(SimpleNamespace(model=model), scoring)
    assert item.prompt_length == 6 and [p.tolist() for p in item.image_positions] == [[1, 2, 3, 4]]
    assert torch.equal(item.rows, probs[0, :2][:, 2:10]) and item.entropies.tolist() == [1.0, 2.0]


def test_two_images_per_sample_use_each_images_own_block_grid_and_size():
    small, wide = type("Img", (), {"size": (56, 56)})(), type("Img", (), {"size": (112, 56)})()  # 2x2 and 2x4 tokens
    rows = torch.zeros(1, 20)
    first, second = torch.arange(2, 6), torch.arange(8, 16)
    rows[0, second[3]] = 0.6  # second image, token (row 0, col 3): pixels x 84..112, y 0..28
    rows[0, first[0]] = 0.4
    item = _item(rows, [first, second], [(1, 4, 4), (1, 4, 8)], torch.tensor([1.0]))
    reward = RegionAttentionReward()
    scores = reward(
        completions=["a", "b"],
        attention=[item, item],
        images=[[small, wide], [small, wide]],
        boxes=[[[], [[90, 5, 100, 20]]], [[[0, 0, 5, 5]], []]],
    )
    mean_image = 1.0 / 12  # all mass on the 12 image tokens
    assert scores[0] == pytest.approx(math.tanh(math.log(0.6 / mean_image)), abs=1e-6)
    assert scores[1] == pytest.approx(math.tanh(math.log(0.4 / mean_image)), abs=1e-6)


# -- reference_quirks: the released SAYO code's choices (docs/sayo-fidelity.md (a), (b), (g)) ------------------------
def test_reference_quirks_box_edge_on_a_token_boundary():
    """112x112 image, 4x4 tokens of 28 px: the box [28, 28, 56, 56] is exactly token (1, 1); the released code's
    int(x2 // 28) also keeps row 2 and column 2."""
    box, size, grid = [28, 28, 56, 56], (112, 112), (1, 8, 8)
    assert region_token_indices(box, size, grid).tolist() == [5]
    assert region_token_indices(box, size, grid, inclusive_end=True).tolist() == [5, 6, 9, 10]
    assert region_token_indices([0, 0, 112, 112], size, grid, inclusive_end=True).numel() == 16  # clamped
    rows = torch.full((1, 16), 0.5 / 15)
    rows[0, 5] = 0.5
    item = _item(rows, [torch.arange(16)], [grid])
    kwargs = dict(completions=["a"], attention=[item], image=[type("Img", (), {"size": size})()], boxes=[[[box]]])
    exact = RegionAttentionReward()(**kwargs)[0]
    quirks = RegionAttentionReward(reference_quirks=True)(**kwargs)[0]
    assert exact == pytest.approx(63 / 65, abs=1e-6)  # a / v = 0.5 / (1/16) = 8: tanh(log 8) = (64-1)/(64+1)
    assert quirks == pytest.approx(4.76 / 6.76, abs=1e-6)  # a = (0.5 + 3 * 0.5/15) / 4 = 0.15, a / v = 2.4


def test_reference_quirks_token_count_from_the_padded_length():
    entropies = torch.tensor([0.1, 2.0, 0.5, 3.0, 0.2, 0.0, 1.0, 0.3, 0.4, 5.0])
    reward = RegionAttentionReward(reference_quirks=True)
    assert torch.nonzero(RegionAttentionReward().select_tokens(entropies)).flatten().tolist() == [1, 3, 9]  # ceil(3)
    # C = 10: int(0.3 * 9) = 2 among the first 9 positions (the code drops the padded batch's last column)
    assert torch.nonzero(reward.select_tokens(entropies, padded_length=10)).flatten().tolist() == [1, 3]
    short = torch.tensor([0.2, 0.1])
    assert int(RegionAttentionReward().select_tokens(short).sum()) == 1  # ceil(0.6)
    assert int(reward.select_tokens(short, padded_length=10).sum()) == 2  # k = 2, as many as it has
    # in a call, C is the longest completion: the long one's last token (entropy 5.0, on the box) is not selected
    rows = torch.zeros(10, 4)
    rows[:, 1] = 1.0
    rows[9] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    long_item = _item(rows, [torch.arange(4)], [(1, 4, 4)], entropies)
    kwargs = dict(completions=["a"], attention=[long_item], image=[type("Img", (), {"size": (56, 56)})()])
    kwargs["boxes"] = [[[[30, 2, 50, 20]]]]  # token 1 only, under both rules (no edge on a boundary)
    assert reward(**kwargs)[0] == pytest.approx(math.tanh(math.log(1.0 / 0.25)), abs=1e-6)
    picked = (1.0 + 1.0 + 0.0) / 3  # tokens 1, 3, 9 on token 1 of the image
    assert RegionAttentionReward()(**kwargs)[0] == pytest.approx(math.tanh(math.log(picked / 0.25)), abs=1e-6)


def test_reference_quirks_format_needs_the_last_answer_closed():
    from trl_attention.sayo.reward import make_format_reward

    ids = [[0] * 80] * 3
    texts = ["<answer>a</answer> <answer>b", "<answer> <answer>b</answer>", "no tag"]
    assert make_format_reward()(texts, ids) == [1.0, 1.0, 0.0]
    assert make_format_reward(reference_quirks=True)(texts, ids) == [0.0, 1.0, 0.0]
