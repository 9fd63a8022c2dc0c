"""Can the tiny VLM learn to read the object a question names? A direct probe, with controls (docs/demo.md).

Trains the tiny Qwen2.5-VL (all of it, the patch embedding included, via a Linear view of its Conv3d) to predict
the answer word right after `<answer>` on the free-layout grounding rows (`make_grounding_dataset`'s default: 1-3
shapes of distinct colours and types anywhere on the image), as a classification over the answer words, and prints
held-out accuracy every `--every` steps next to the image-blind baseline. Controls:

  none   the free-layout task (the demo's before it moved to the grid layout, docs/demo.md)
  fill   the image is replaced by one filled with the target's colour (no selection needed: colour questions are
         answerable from any token; shape questions are not)
  text   the prompt also says "It is a <colour> <shape>." (the answer is in the text: the pipeline can learn)

With `--attention-loss W` the final layer's attention of the answer position is also supervised onto the target
box (loss + W * -log(its mass on the box's tokens), through `trl_attention.capture_attention`), and each curve
point also gives that attention's share of the image (`share`; the box's share of the image tokens is printed
beside it): does a model that is made to look at the right place answer from it?

    python benchmarks/grounding_probe.py --control none fill text --steps 300
    python benchmarks/grounding_probe.py --control none --attention-loss 1 --steps 400
"""

from __future__ import annotations

import argparse
import os
import time
import types

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from trl_attention import capture_attention  # noqa: E402
from trl_attention_recipes.evaluation import majority_accuracy  # noqa: E402
from trl_attention.tiny import (  # noqa: E402
    COLORS,
    box_to_token_mask,
    build_processor,
    build_tiny_vlm,
    make_grounding_dataset,
)

CONTROLS = ("none", "fill", "text")


def _linear_patch_embed(module):
    """The patch embedding's Conv3d (kernel == stride == the patch) as the Linear it equals: its weight gradient
    is fast on CPU, where the Conv3d's is not."""

    def forward(self, x):
        weight = self.proj.weight
        return F.linear(x.reshape(-1, weight[0].numel()).to(weight.dtype), weight.reshape(weight.shape[0], -1))

    module.forward = types.MethodType(forward, module)


def _batch(processor, rows, control: str, image_size: int):
    texts, images = [], []
    for row in rows:
        text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) + "<answer>"
        if control == "text":
            text = text.replace("What", f"It is a {row['target_color']} {row['target_shape']}. What", 1)
        image = row["image"]
        if control == "fill":
            image = Image.new("RGB", (image_size, image_size), COLORS[row["target_color"]])
        texts.append(text)
        images.append([image])
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def _target_tokens(batch, rows, image_token_id: int, image_size: int) -> torch.Tensor:
    """(B, T) bool: the sequence positions of each row's target-box visual tokens."""
    mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    for b, row in enumerate(rows):
        positions = (batch["input_ids"][b] == image_token_id).nonzero()[:, 0]
        mask[b, positions[box_to_token_mask(row["box"], image_size, batch["image_grid_thw"][b])]] = True
    return mask


def probe(control: str, args) -> list[tuple[int, float, float]]:
    """Held-out [(step, accuracy, target share of the answer position's final-layer image attention)]."""
    torch.manual_seed(args.seed)
    data = make_grounding_dataset(args.n_train + args.n_eval, seed=args.seed, image_size=args.image_size)
    train, held = data.select(range(args.n_train)), data.select(range(args.n_train, len(data)))
    processor = build_processor(max_pixels=args.image_size**2)
    processor.tokenizer.padding_side = "left"
    model, _ = build_tiny_vlm(seed=args.seed, vision={"hidden_size": args.vision_width})
    _linear_patch_embed(model.model.visual.patch_embed)
    image_token = model.config.image_token_id
    words = sorted(set(data["answer"]))
    ids = [processor.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    assert len(set(ids)) == len(ids), "answer words must start with distinct tokens"
    labels = lambda rows: torch.tensor([words.index(r["answer"]) for r in rows])  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    held_rows = [held[i] for i in range(len(held))]

    def forward(rows):
        """(answer-word logits, the answer position's final-layer attention (B, T), target tokens (B, T))."""
        batch = _batch(processor, rows, control, args.image_size)
        with capture_attention(model, num_rows=1) as cap:
            logits = model(**batch).logits[:, -1, ids]
        return logits, cap.probs[:, 0], _target_tokens(batch, rows, image_token, args.image_size), batch

    curve = []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                logits, attention, target, batch = forward(held_rows)
            image = attention * (batch["input_ids"] == image_token)
            share = float(((attention * target).sum(-1) / image.sum(-1)).mean())
            curve.append((step, float((logits.argmax(-1) == labels(held_rows)).float().mean()), share))
            model.train()
        if step == args.steps:
            break
        rows = [train[i] for i in torch.randint(len(train), (args.batch,), generator=generator).tolist()]
        logits, attention, target, _ = forward(rows)
        loss = F.cross_entropy(logits, labels(rows))
        if args.attention_loss:
            loss = loss - args.attention_loss * torch.log((attention * target).sum(-1) + 1e-6).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return curve


def _box_share(data, args) -> float:
    """Mean fraction of the held-out rows' visual tokens in the target box (the share of uniform attention)."""
    grid = (1, args.image_size // 14, args.image_size // 14)
    held = data.select(range(args.n_train, len(data)))
    return float(sum(box_to_token_mask(b, args.image_size, grid).float().mean() for b in held["box"]) / len(held))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--control", nargs="+", choices=CONTROLS, default=list(CONTROLS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50, help="held-out evaluation interval (steps)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--vision-width", type=int, default=32)
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--n-eval", type=int, default=128)
    p.add_argument("--attention-loss", type=float, default=0.0, help="weight of the box-attention loss (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.image_size % 28:  # the processor would resize it, and the box -> token mapping assumes it does not
        p.error(f"--image-size must be a multiple of 28 (one visual token per 28 px cell), got {args.image_size}")
    torch.set_num_threads(args.threads)
    data = make_grounding_dataset(args.n_train + args.n_eval, seed=args.seed, image_size=args.image_size)
    baseline = majority_accuracy(data.select(range(args.n_train)), data.select(range(args.n_train, len(data))))
    print(
        f"held-out {args.n_eval} rows; image-blind baseline accuracy {baseline:.3f}; {_box_share(data, args):.3f} of"
    )
    print(f"the visual tokens are the target box's; attention loss weight {args.attention_loss}")
    for control in args.control:
        start = time.perf_counter()
        curve = probe(control, args)
        shown = "  ".join(f"{step}: {acc:.3f}" for step, acc, _ in curve)
        shares = "  ".join(f"{step}: {share:.3f}" for step, _, share in curve)
        print(f"control={control:<5} accuracy by step  {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)
        print(f"control={control:<5} share by step     {shares}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
