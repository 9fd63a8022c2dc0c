"""Can the tiny VLM learn to read the object a question names? A direct probe, with controls (docs/demo.md).

Trains the tiny Qwen2.5-VL (all of it, the patch embedding included, via a Linear view of its Conv3d) to predict
the answer word right after `<answer>` on the demo's grounding rows (`make_grounding_dataset`: 1-3 shapes of
distinct colours and types), as a classification over the answer words, and prints held-out accuracy every
`--every` steps next to the image-blind baseline. Controls:

  none   the task as the demo has it
  fill   the image is replaced by one filled with the target's colour (no selection needed: colour questions are
         answerable from any token; shape questions are not)
  text   the prompt also says "It is a <colour> <shape>." (the answer is in the text: the pipeline can learn)

    python benchmarks/grounding_probe.py --control none fill text --steps 300
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

from trl_attention.evaluation import majority_accuracy  # noqa: E402
from trl_attention.tiny import COLORS, build_processor, build_tiny_vlm, make_grounding_dataset  # noqa: E402

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


def probe(control: str, args) -> list[tuple[int, float]]:
    """Held-out accuracy [(step, accuracy)] of one training run."""
    torch.manual_seed(args.seed)
    data = make_grounding_dataset(args.n_train + args.n_eval, seed=args.seed, image_size=args.image_size)
    train, held = data.select(range(args.n_train)), data.select(range(args.n_train, len(data)))
    processor = build_processor(max_pixels=args.image_size**2)
    processor.tokenizer.padding_side = "left"
    model, _ = build_tiny_vlm(seed=args.seed, vision={"hidden_size": args.vision_width})
    _linear_patch_embed(model.model.visual.patch_embed)
    words = sorted(set(data["answer"]))
    ids = [processor.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    assert len(set(ids)) == len(ids), "answer words must start with distinct tokens"
    labels = lambda rows: torch.tensor([words.index(r["answer"]) for r in rows])  # noqa: E731
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    held_rows = [held[i] for i in range(len(held))]
    curve = []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            model.eval()
            with torch.no_grad():
                logits = model(**_batch(processor, held_rows, control, args.image_size)).logits[:, -1, ids]
            curve.append((step, float((logits.argmax(-1) == labels(held_rows)).float().mean())))
            model.train()
        if step == args.steps:
            break
        rows = [train[i] for i in torch.randint(len(train), (args.batch,), generator=generator).tolist()]
        logits = model(**_batch(processor, rows, control, args.image_size)).logits[:, -1, ids]
        loss = F.cross_entropy(logits, labels(rows))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return curve


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = make_grounding_dataset(args.n_train + args.n_eval, seed=args.seed, image_size=args.image_size)
    baseline = majority_accuracy(data.select(range(args.n_train)), data.select(range(args.n_train, len(data))))
    print(f"held-out {args.n_eval} rows; image-blind baseline accuracy {baseline:.3f}")
    for control in args.control:
        start = time.perf_counter()
        curve = probe(control, args)
        shown = "  ".join(f"{step}: {acc:.3f}" for step, acc in curve)
        print(f"control={control:<5} accuracy by step  {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
