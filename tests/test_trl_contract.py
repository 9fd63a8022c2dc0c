"""The TRL contract: every TRL internal `trl_attention.trl_internals` declares, checked against the installed TRL's
own code (signatures, rollouts, `_compute_loss`) on tiny offline models. When a TRL release changes one, a test here
fails first and names what changed; docs/trl-internals.md says what to do."""

import ast
import inspect
import re
import textwrap
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import trl
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from tests.testing_utils import (
    RecordingDict,
    check_metrics_are_averaged,
    count_forwards,
    grpo_trainer,
    length_reward,
    record_calls,
)
from trl_attention import AttentionGKDTrainer, AttentionGRPOTrainer
from trl_attention import trl_internals as ti
from trl_attention.distill.losses import backbone_hidden_states
from trl_attention.tiny import make_grounding_dataset, save_tiny_vlm

pytestmark = pytest.mark.filterwarnings("ignore")  # TRL's experimental/deprecation notices, not contracts
GKDTrainer = ti.GKDTrainer
SEE = "update trl_attention/trl_internals.py and its users (docs/trl-internals.md)"
# Of SCORING_FORWARD_KEYS, what TRL's batch holds for the tiny VLM (Qwen2.5-VL, PaddleOCR-VL's processor).
TINY_VLM_BATCH_KEYS = {"pixel_values", "image_grid_thw", "mm_token_type_ids", "num_images"}
DECLARED_BATCH_KEYS = {*ti.SCORING_FORWARD_KEYS, *ti.LOSS_BATCH_KEYS, *ti.OPTIONAL_LOSS_BATCH_KEYS}
DECLARED_BATCH_KEYS |= set(ti.TRL_ONLY_LOSS_BATCH_KEYS)


def _parameters(func) -> list[str]:
    names = list(inspect.signature(func).parameters)
    return names[1:] if names[:1] == ["self"] else names  # GKD's generate_on_policy_outputs is a staticmethod


# -- signatures ---------------------------------------------------------------------------------------------------
OVERRIDES = [(GRPOTrainer, AttentionGRPOTrainer, *item) for item in ti.GRPO_OVERRIDES.items()]
OVERRIDES += [(GKDTrainer, AttentionGKDTrainer, *item) for item in ti.GKD_OVERRIDES.items()]
OVERRIDE_IDS = [f"{trl_cls.__name__}.{name}" for trl_cls, _, name, _ in OVERRIDES]


@pytest.mark.parametrize("trl_cls, ours, name, expected", OVERRIDES, ids=OVERRIDE_IDS)
def test_overrides_match_trl_signatures(trl_cls, ours, name, expected):
    owner = f"{trl_cls.__name__}.{name}"
    assert callable(getattr(trl_cls, name, None)), f"TRL {trl.__version__} has no {owner}; {SEE}"
    found = _parameters(getattr(trl_cls, name))
    assert found[: len(expected)] == list(expected), (
        f"TRL {trl.__version__} changed {owner}: its parameters are ({', '.join(found)}), trl_attention expects "
        f"them to start with ({', '.join(expected)}); {SEE}"
    )
    overrides = [cls for cls in ours.__mro__[: ours.__mro__.index(trl_cls)] if name in vars(cls)]
    static = isinstance(inspect.getattr_static(trl_cls, name), staticmethod)
    assert all(isinstance(vars(cls)[name], staticmethod) == static for cls in overrides), (
        f"{owner} is {'a' if static else 'not a'} staticmethod in TRL: the override must keep that (TRL's API)"
    )
    assert overrides, f"{owner} is declared as overridden but no class of {ours.__name__} overrides it"
    for cls in overrides:  # TRL may pass any of its parameters: every override must accept all of them
        try:
            method = vars(cls)[name]
            self_ = () if isinstance(method, staticmethod) else (None,)
            inspect.signature(method).bind(*self_, **dict.fromkeys(found))
        except TypeError as error:
            pytest.fail(f"{cls.__qualname__}.{name} does not accept TRL's ({', '.join(found)}): {error}")


def test_helpers_match_trl_and_behave_as_used():
    for name, expected in ti.HELPER_PARAMETERS.items():
        func = GKDTrainer.generalized_jsd_loss if name == "generalized_jsd_loss" else getattr(ti, name)
        found = _parameters(func)
        assert [p for p in found if p in expected] == list(expected) and found[0] == expected[0], (
            f"TRL {trl.__version__} changed {func.__module__}.{func.__qualname__}: parameters ({', '.join(found)}), "
            f"trl_attention passes ({', '.join(expected)}) in this order; {SEE}"
        )
    padded = ti.pad([torch.tensor([1, 2]), torch.tensor([3])], padding_value=9, padding_side="left")
    assert padded.tolist() == [[1, 2], [9, 3]]
    ti.disable_dropout_in_model(dropout := torch.nn.Sequential(torch.nn.Dropout(0.5)))
    assert dropout[0].p == 0
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=gen), torch.randn(2, 5, 11, generator=gen)
    labels = torch.tensor([[-100, 1, 2, 3, -100], [4, 5, -100, -100, -100]])
    mask = (labels != -100).float()
    per_token = ti.generalized_jsd(student, teacher, beta=0.3)  # (B, C): GKD's token loss, summed over the vocab
    gkd = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=0.3)
    torch.testing.assert_close((per_token * mask).sum() / mask.sum(), gkd)


def test_loss_types_are_trls(lm_trainer, monkeypatch):
    help_text = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    supported = re.search(r"Supported values are (.*?)\.", help_text)
    assert supported, f"GRPOConfig.loss_type's help no longer lists 'Supported values are ...': {help_text[:200]}"
    documented = set(re.findall(r"'(\w+)'", supported.group(1)))
    branches = set()  # every string `_compute_loss` compares `self.loss_type` with
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(GRPOTrainer._compute_loss)))):
        if isinstance(node, ast.Compare) and getattr(node.left, "attr", None) == "loss_type":
            for comparator in node.comparators:
                items = comparator.elts if isinstance(comparator, (ast.List, ast.Tuple)) else [comparator]
                branches |= {item.value for item in items if isinstance(item, ast.Constant)}
    assert documented == branches == set(ti.LOSS_TYPES), (
        f"loss types: GRPOConfig documents {sorted(documented)}, TRL's _compute_loss branches on {sorted(branches)}, "
        f"LOSS_TYPES (aggregate_like_trl) has {sorted(ti.LOSS_TYPES)}; {SEE}"
    )
    inputs, logps = _batch()  # and TRL rejects any other
    _fake_logps(lm_trainer, monkeypatch, logps)
    monkeypatch.setattr(lm_trainer, "loss_type", "not_a_loss_type")
    with pytest.raises(ValueError, match="not_a_loss_type"):
        GRPOTrainer._compute_loss(lm_trainer, lm_trainer.model, inputs)


# -- the old-logps forward ----------------------------------------------------------------------------------------
def _simulate_vllm(trainer, monkeypatch):
    """vLLM rollouts without vLLM: TRL's own generation, plus the sampling logprobs vLLM would return."""
    generate = trainer._generate_single_turn

    def single_turn(*args, **kwargs):
        trainer.use_vllm = False
        completion_ids, _ = generate(*args, **kwargs)
        trainer.use_vllm = True
        return completion_ids, [[-1.0] * len(ids) for ids in completion_ids]

    monkeypatch.setattr(trainer, "use_vllm", True)
    monkeypatch.setattr(trainer, "_generate_single_turn", single_turn)


# (num_iterations, steps_per_generation, gradient_accumulation_steps, use_vllm, vllm_importance_sampling_correction)
GRID = [(1, 1, 1, 0, 1), (2, 1, 1, 0, 1), (1, 2, 1, 0, 1), (1, 1, 2, 0, 1), (2, 1, 2, 0, 1), (2, 2, 2, 0, 1)]
GRID += [(1, 3, 2, 0, 1), (1, 1, 1, 1, 1), (1, 1, 1, 1, 0), (2, 1, 1, 1, 0), (1, 1, 2, 1, 1)]


@pytest.mark.parametrize("setting", GRID, ids=lambda s: "iter{}-spg{}-gas{}-vllm{}-is{}".format(*s))
def test_scores_old_logps_is_trls_condition(tmp_path, text_dataset, monkeypatch, setting):
    iterations, steps, accumulation, vllm, correction = setting
    schedule = dict(num_iterations=iterations, steps_per_generation=steps, gradient_accumulation_steps=accumulation)
    trainer = grpo_trainer(tmp_path, **schedule, vllm_importance_sampling_correction=bool(correction))
    if vllm:
        _simulate_vllm(trainer, monkeypatch)
    trainer.model.train()
    ran = "old_per_token_logps" in trainer._generate_and_score_completions([text_dataset[i] for i in range(4)])
    assert ran == ti.scores_old_logps(trainer), (
        f"TRL {'ran' if ran else 'skipped'} the old-logps forward with {setting} (num_iterations, "
        f"steps_per_generation, gradient_accumulation_steps, use_vllm, IS correction), scores_old_logps says the "
        f"opposite; {SEE}"
    )
    assert vllm or ran == ti.reuses_rollouts(trainer)  # without vLLM, TRL's condition is its first half


def test_package_batch_keys_travel_with_their_rows(tmp_path, text_dataset):
    trainer, rows = grpo_trainer(tmp_path, steps_per_generation=2), lambda out: _sequences(out)[0][..., None].float()
    generate = trainer._generate_and_score_completions

    def with_extras(inputs):  # (B, T, 1) tensors, as old_attention_probs is (B, C, T)
        out = generate(inputs)
        extras = {key: rows(out) for key in ti.PACKAGE_BATCH_KEYS}
        extras.update({key: list(rows(out)) for key in ti.PACKAGE_LIST_BATCH_KEYS})  # one entry per row
        return {**out, **extras}

    trainer._generate_and_score_completions = with_extras
    trainer.model.train()
    trainer._prepare_inputs([text_dataset[i] for i in range(8)])  # TRL shuffles the rollouts and splits them in 2
    for batch, key in [(batch, key) for batch in trainer._buffered_inputs for key in ti.PACKAGE_BATCH_KEYS]:
        assert torch.equal(batch[key], rows(batch)), f"TRL's buffering no longer keeps {key} with its rows; {SEE}"
    for batch, key in [(batch, key) for batch in trainer._buffered_inputs for key in ti.PACKAGE_LIST_BATCH_KEYS]:
        assert isinstance(batch[key], list), f"TRL's buffering turned the per-row list {key} into {type(batch[key])}"
        assert torch.equal(torch.stack(batch[key]), rows(batch)), f"TRL's buffering misaligns {key}; {SEE}"


# -- one VLM rollout through TRL's own `_generate_and_score_completions` -----------------------------------------
def _sequences(b):
    return torch.cat([b["prompt_ids"], b["completion_ids"]], 1), torch.cat([b["prompt_mask"], b["completion_mask"]], 1)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """A plain GRPOTrainer on the tiny VLM (loaded from a path, so TRL builds its reference model: beta > 0), and
    one rollout with num_iterations=2 (TRL scores old logps), recording the overridden methods' calls."""
    path = save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "model")
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    dataset = make_grounding_dataset(4, seed=0)
    funcs = [length_reward, length_reward]
    trainer = grpo_trainer(
        tmp_path_factory.mktemp("out"), model, processor, dataset, funcs, num_iterations=2, beta=0.05
    )
    passed = []  # the keywords TRL gives a reward function

    def constant(completions, **kwargs):  # replaced after construction, as the attention rewards are
        passed.append(sorted(kwargs) + ["completions"])
        return [0.25] * len(completions)

    trainer.reward_funcs[1] = constant
    calls, names = [], ("_tokenize_prompts", "_get_per_token_logps_and_entropies", "_calculate_rewards")
    record_calls(trainer, names, calls)
    trainer.model.train()
    output = trainer._generate_and_score_completions([dataset[i] for i in range(4)])
    for name in names:
        delattr(trainer, name)
    columns = dataset.column_names
    return SimpleNamespace(trainer=trainer, output=output, calls=calls, reward_kwargs=passed, columns=columns)


def test_reward_functions_get_the_declared_keywords(vlm):
    (passed,) = vlm.reward_kwargs
    columns = set(vlm.columns) - set(ti.REWARD_EXCLUDED_COLUMNS)
    assert set(passed) == set(ti.REWARD_KWARGS) | columns, (
        f"TRL now passes reward functions {sorted(set(passed) - columns)} besides the dataset's columns; {SEE}"
    )


def test_rollout_batch_and_calls(vlm):
    out, trainer = vlm.output, vlm.trainer
    missing = [key for key in ti.LOSS_BATCH_KEYS if key not in out]
    assert not missing, f"TRL's _generate_and_score_completions no longer returns {missing}; {SEE}"
    assert not set(out) - DECLARED_BATCH_KEYS, (
        f"TRL's batch has undeclared keys {sorted(set(out) - DECLARED_BATCH_KEYS)}; {SEE}"
    )
    multimodal = {key for key in ti.SCORING_FORWARD_KEYS if key in out}
    assert multimodal == TINY_VLM_BATCH_KEYS, (
        f"TRL's VLM batch has multimodal keys {sorted(multimodal)}, not {sorted(TINY_VLM_BATCH_KEYS)}; {SEE}"
    )
    (b, p), c = out["prompt_ids"].shape, out["completion_ids"].size(1)
    assert out["prompt_mask"].shape == (b, p) and out["completion_mask"].shape == (b, c) and b == 4
    assert out["advantages"].shape == (b,) and out["num_items_in_batch"].dim() == 0
    assert out["old_per_token_logps"].shape == out["ref_per_token_logps"].shape == (b, c)
    assert out["mm_token_type_ids"].shape == (b, p + c)  # spans prompt + completion: the teacher takes it as it is
    assert out["num_images"] == [1] * b and out["image_grid_thw"].shape == (b, 3)
    assert out["pixel_values"].size(0) == int(out["image_grid_thw"].prod(-1).sum())
    ids, mask = _sequences(out)
    with torch.no_grad():  # what the GRPO teacher term does: one forward with the batch's tensors as they are
        kwargs = {key: out[key] for key in ti.TEACHER_FORWARD_KEYS if key in out}
        assert trainer.model(input_ids=ids, attention_mask=mask, **kwargs).logits.shape[:2] == (b, p + c)
    logs = trainer._logs  # the rollouts the heatmap callback reads, and whose images it extends
    assert set(ti.LOGS_KEYS) <= set(logs), f"TRL's _logs has keys {sorted(logs)}; {SEE}"
    assert len(logs["prompt"]) == len(logs["completion"]) == b and [len(i) for i in logs["images"]] == [1] * b
    assert all(isinstance(image, Image.Image) for images in logs["images"] for image in images)
    calls = vlm.calls  # the overridden methods, in TRL's order, with what they are given and return
    order = [(call.name, call.args[0] is trainer.model if call.name.startswith("_get") else None) for call in calls]
    expected = [("_tokenize_prompts", None), ("_get_per_token_logps_and_entropies", True)]
    expected += [("_get_per_token_logps_and_entropies", False), ("_calculate_rewards", None)]
    assert order == expected, f"TRL's rollout calls changed: {order} (policy old-logps, reference, rewards); {SEE}"
    prompt_ids, images, fields = calls[0].result  # _tokenize_prompts: (ids, images, multimodal fields)
    assert isinstance(prompt_ids, list) and all(isinstance(ids, list) for ids in prompt_ids)
    batch_prompts = [row[mask.bool()].tolist() for row, mask in zip(out["prompt_ids"], out["prompt_mask"])]
    assert prompt_ids == batch_prompts  # the attention rewards rebuild the batch from these
    assert [len(image_list) for image_list in images] == [1] * b
    missing = set(ti.TOKENIZED_PROMPT_FIELDS) - set(fields)
    assert isinstance(fields, dict) and not missing, f"_tokenize_prompts' fields lack {missing}: {sorted(fields)}"
    for call in calls[1:3]:  # the scoring forwards: 4 positional arguments, the rest by name
        assert len(call.args) == 4 and call.args[3] == c, f"TRL now calls it with {len(call.args)} positional args"
        unknown = set(call.kwargs) - {"batch_size", *ti.SCORING_FORWARD_KEYS}
        assert not unknown and {"batch_size", "image_grid_thw", "num_images"} <= set(call.kwargs), sorted(call.kwargs)
        assert isinstance(call.result, tuple) and call.result[0].shape == (b, c) and call.result[1] is None
    rewards = calls[3].result
    assert rewards.shape == (b, 2), f"_calculate_rewards returned {tuple(rewards.shape)}, expected (N, 2)"
    assert rewards[:, 1].tolist() == [0.25] * b  # TRL calls the reward_funcs list as it is at call time


def test_scoring_forward_returns_logps_and_entropies(vlm):
    out, trainer = vlm.output, vlm.trainer
    b, c = out["completion_ids"].shape
    kwargs = {key: out[key] for key in ti.SCORING_FORWARD_KEYS if key in out}
    ids, mask = _sequences(out)
    with torch.no_grad(), backbone_hidden_states(trainer.model) as hidden:
        result = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, c, batch_size=2, compute_entropy=True, **kwargs
        )
    assert isinstance(result, tuple) and len(result) >= 2, f"returned {type(result)} of length {len(result)}"
    assert result[0].shape == (b, c) and result[1].shape == (b, c), [tuple(r.shape) for r in result[:2]]
    # TRL's fused LM head keeps no logits: the GRPO teacher term projects the backbone's states, chunk by chunk
    assert len(hidden) == 2, f"TRL ran {len(hidden)} forwards for 2 chunks of 2 rows"
    logits = trainer.model.get_output_embeddings()(torch.cat(hidden)[:, -c - 1 : -1]) / trainer.args.temperature
    logps = logits.log_softmax(-1).gather(-1, out["completion_ids"][..., None]).squeeze(-1)
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    keep = out["completion_mask"].bool()
    torch.testing.assert_close(logps[keep], result[0][keep], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(entropy[keep], result[1][keep], atol=1e-4, rtol=1e-4)


# -- TRL's `_compute_loss`: the keys it reads, and its normalisation ---------------------------------------------
@pytest.fixture(scope="module")
def lm_trainer(tmp_path_factory):
    trainer = grpo_trainer(tmp_path_factory.mktemp("lm"), steps_per_generation=4, gradient_accumulation_steps=2)
    trainer.epsilon_high = 0.7  # below 1: CISPO's clamp of the ratio bites
    assert trainer.beta == 0.0 and not trainer._entropy_bonus_enabled and trainer.top_entropy_quantile == 1.0
    return trainer


def _fake_logps(trainer, monkeypatch, logps, seen=None):
    """TRL's own scoring forward, with `logps` (a leaf) in place of the log-probs and zero entropies."""
    real = GRPOTrainer._get_per_token_logps_and_entropies.__get__(trainer)

    def scoring(*args, **kwargs):
        seen is None or seen.update(kwargs)
        return (logps, torch.zeros_like(logps), *real(*args, **kwargs)[2:])

    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", scoring)


def _batch(**extra):
    """5 completions of 6 tokens with uneven masks (one empty), advantages of both signs, an arbitrary item count."""
    mask = (torch.arange(6)[None] < torch.tensor([6, 3, 1, 0, 5])[:, None]).long()
    ones = torch.ones(5, 3, dtype=torch.long)
    inputs = dict(prompt_ids=ones, prompt_mask=ones, completion_ids=torch.ones_like(mask), completion_mask=mask)
    inputs.update(advantages=torch.tensor([0.7, -1.3, 0.4, 1.1, -0.6]), num_items_in_batch=torch.tensor(37.0))
    return {**inputs, **extra}, -torch.rand(5, 6, generator=torch.Generator().manual_seed(0))


def test_compute_loss_reads_only_declared_keys(vlm, lm_trainer, monkeypatch):
    declared = DECLARED_BATCH_KEYS
    batch = RecordingDict(vlm.output)  # TRL's own VLM batch (with reference logps), TRL's own forward
    with count_forwards(model=vlm.trainer.model) as forwards:  # the one forward the loss captures attention in
        loss = GRPOTrainer._compute_loss(vlm.trainer, vlm.trainer.model, batch)
    assert forwards["model"] == 1, f"TRL's _compute_loss ran {forwards['model']} policy forwards, not 1; {SEE}"
    assert loss.dim() == 0 and loss.requires_grad and torch.isfinite(loss), loss
    read, seen = set(batch.read), {}
    # the branches a VLM batch does not reach: tool mask, off-policy mask, vespo, vLLM importance sampling
    inputs, logps = _batch(tool_mask=torch.ones(5, 6, dtype=torch.long))
    inputs.update(ref_per_token_logps=logps - 0.1, sampling_per_token_logps=logps, importance_sampling_ratio=logps)
    _fake_logps(lm_trainer, monkeypatch, logps.clone(), seen)
    monkeypatch.setattr(lm_trainer, "beta", 0.1)
    monkeypatch.setattr(lm_trainer, "off_policy_mask_threshold", 0.5)
    for loss_type, vllm in (("vespo", False), ("dapo", True)):
        monkeypatch.setattr(lm_trainer, "loss_type", loss_type)
        monkeypatch.setattr(lm_trainer, "use_vllm", vllm)
        batch = RecordingDict(inputs)
        assert GRPOTrainer._compute_loss(lm_trainer, lm_trainer.model, batch).dim() == 0
        read |= batch.read
    assert not read - declared, f"TRL's _compute_loss now reads batch keys {sorted(read - declared)}; {SEE}"
    multimodal = set(seen) - {"compute_entropy", "compute_aux_loss"}
    assert multimodal == set(ti.SCORING_FORWARD_KEYS), f"TRL's loss forward passes {sorted(multimodal)}; {SEE}"
    known = (*ti.GRPO_OVERRIDES["_get_per_token_logps_and_entropies"], "compute_aux_loss")
    params = [p for p in _parameters(GRPOTrainer._get_per_token_logps_and_entropies) if p not in known]
    assert set(params) == set(ti.SCORING_FORWARD_KEYS), f"the scoring forward takes {params}; {SEE}"


def _per_token_at_ratio_one(trainer, x, mask, advantages):
    """(value, derivative) of TRL's per-token policy loss at ratio 1 (old logps = logps, beta = 0), by loss type."""
    a, args, loss_type = advantages[:, None], trainer.args, trainer.loss_type
    if loss_type == "cispo":  # -clamp(r, max=epsilon_high).detach() * A * logp
        scale = min(1.0, trainer.epsilon_high)
        return -scale * a * x, -scale * a
    if loss_type == "vespo":  # -phi(w) * A * logp, phi (TRL's own, under no_grad) at log w = 0
        gamma = {key: getattr(args, f"vespo_{key}") for key in ("k_pos", "lambda_pos", "k_neg", "lambda_neg")}
        phi = GRPOTrainer.get_gamma_weights(a, torch.zeros_like(x), mask, None, **gamma)
        return -phi * a * x, -phi * a
    if loss_type == "sapo":  # -sigmoid(tau (r - 1)) * 4 / tau * A: value -2 A / tau, d/dr = -A
        tau = torch.where(a > 0, args.sapo_temperature_pos, args.sapo_temperature_neg)
        return (-2.0 / tau * a).expand_as(x), -a
    if loss_type in ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"):  # -min(r A, clip(r) A), r = 1 inside the clip
        return (-a).expand_as(x), -a
    pytest.fail(f"no derivation of TRL's per-token loss for loss_type={loss_type!r}: add one here")


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("loss_type", ti.LOSS_TYPES)
def test_normalisation_matches_trl_compute_loss(lm_trainer, monkeypatch, loss_type, mode):
    """With logps x at ratio 1, TRL's loss has dL/dx_t = w_t g_t (w: its normaliser, g: the per-token derivative):
    aggregate_like_trl(x) must have gradient w_t, and give TRL's value on the per-token loss."""
    trainer = lm_trainer
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 3)  # != args' 2 and != steps_per_generation
    trainer.model.train(mode == "train")
    inputs, x = _batch()
    x.requires_grad_(True)
    mask = inputs["completion_mask"].float()
    _fake_logps(trainer, monkeypatch, x)
    loss = GRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    (grad_trl,) = torch.autograd.grad(loss, x)
    (weights,) = torch.autograd.grad(ti.aggregate_like_trl(trainer, x, mask, inputs), x)
    value, derivative = _per_token_at_ratio_one(trainer, x.detach(), mask, inputs["advantages"])
    assert weights.abs().sum() > 0 and (weights[mask == 0] == 0).all()
    message = f"aggregate_like_trl's loss_type={loss_type!r} ({mode}) no longer normalises like TRL's _compute_loss"
    torch.testing.assert_close(grad_trl, derivative * weights, msg=lambda m: f"{message} (gradient): {m}; {SEE}")
    expected = ti.aggregate_like_trl(trainer, value, mask, inputs)
    torch.testing.assert_close(loss.detach(), expected, msg=lambda m: f"{message} (value): {m}; {SEE}")


# -- attributes, the training loop, the model card ----------------------------------------------------------------
def test_attributes_training_loop_and_model_card(tmp_path, vlm):
    missing = [name for name in ti.GRPO_ATTRIBUTES if not hasattr(vlm.trainer, name)]
    assert not missing, f"TRL {trl.__version__}'s GRPOTrainer no longer has {missing}; {SEE}"
    trainer = grpo_trainer(tmp_path, max_steps=1, gradient_accumulation_steps=2, log_completions=True)
    del trainer.current_gradient_accumulation_steps  # transformers' training loop must set it
    seen, compute_loss = [], trainer._compute_loss
    trainer._compute_loss = lambda *a: seen.append(trainer.current_gradient_accumulation_steps) or compute_loss(*a)
    mark = lambda *args, **kwargs: trainer._logs["prompt"].__setitem__(0, "contract-marker")  # noqa: E731
    trainer.add_callback(type("Mark", (TrainerCallback,), {"on_log": mark}))  # as the heatmap callback edits _logs
    trainer.train()
    missing = [name for name in ti.TRAINING_LOOP_ATTRIBUTES if not hasattr(trainer, name)]
    assert not missing and seen == [2, 2], f"transformers' training loop set {missing or seen}; {SEE}"
    table = pd.read_parquet(f"{tmp_path}/completions/completions_00001.parquet")
    assert table["prompt"][0] == "contract-marker", "TRL now builds its completions table before the callbacks' on_log"
    check_metrics_are_averaged(trainer)
    for cls in (GRPOTrainer, GKDTrainer):  # the model card's class attributes, which both trainers extend
        missing = [name for name in ti.CLASS_ATTRIBUTES if name not in vars(cls)]
        assert not missing, f"TRL's {cls.__name__} no longer defines {missing}; {SEE}"
        assert isinstance(cls._tag_names, list) and isinstance(cls._name, str) and set(cls._paper) == {*ti.PAPER_KEYS}
    paper = {"title": "Contract Paper Title", "id": "1234.56789", "citation": "@misc{contract_citation}"}
    for name, value in zip(ti.CLASS_ATTRIBUTES, (["contract-tag"], "ContractTrainer", paper)):
        setattr(trainer, name, value)
    trainer.create_model_card()
    card = open(f"{trainer.args.output_dir}/README.md").read()
    absent = [v for v in ("contract-tag", "ContractTrainer", *paper.values()) if v not in card]
    assert not absent, f"TRL's create_model_card no longer writes {absent} from _tag_names/_name/_paper; {SEE}"


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_importance_weighting_is_trls(lm_trainer, monkeypatch, loss_type, level):
    """On a simulated vLLM batch, TRL weights its per-token policy loss by `importance_sampling_ratio` (0 where its
    mask modes drop a token or sequence): `importance_weighted` must reproduce those weights exactly, for the RAL
    and teacher terms to follow TRL's correction (docs/trl-internals.md)."""
    trainer = lm_trainer
    for name, value in (("loss_type", loss_type), ("use_vllm", True), ("vllm_importance_sampling_correction", True)):
        monkeypatch.setattr(trainer, name, value)
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 3)
    trainer.model.train()
    ratio = 2 * torch.rand(5, 6 if level == "token" else 1, generator=torch.Generator().manual_seed(1))
    ratio[0, -1 if level == "token" else 0] = 0.0  # a masked token (token_mask) / sequence (sequence_mask)
    inputs, x = _batch(importance_sampling_ratio=ratio)
    x.requires_grad_(True)
    mask = inputs["completion_mask"].float()
    _fake_logps(trainer, monkeypatch, x)
    (grad_trl,) = torch.autograd.grad(GRPOTrainer._compute_loss(trainer, trainer.model, inputs), x)
    weighted = ti.importance_weighted(trainer, x, inputs)
    (weights,) = torch.autograd.grad(ti.aggregate_like_trl(trainer, weighted, mask, inputs), x)
    _, derivative = _per_token_at_ratio_one(trainer, x.detach(), mask, inputs["advantages"])
    message = "importance_weighted no longer weights like TRL's vLLM importance-sampling correction"
    torch.testing.assert_close(grad_trl, derivative * weights, msg=lambda m: f"{message}: {m}; {SEE}")
    assert weights[0, -1] == 0 and weights[1, 0] != 0
    monkeypatch.setattr(trainer, "vllm_importance_sampling_correction", False)  # TRL's switch is ours
    assert ti.importance_weighted(trainer, x, inputs) is x
