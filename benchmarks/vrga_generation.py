"""Generation throughput with VRGA vs plain sdpa generation vs an all-layers-eager VRGA, as ratios, in one run.

Modes, all greedy with the same prompts and exactly --new_tokens new tokens per sample:
  plain      sdpa in every layer, no VRGA (the baseline)
  vrga       VRGA the project's way: sdpa everywhere, one extra (B, H, 1, T) row per layer, focus-token
             correction of the boosted heads (VRGAConfig(mode="correction"), the default)
  explicit   sdpa prefill, but every decoding layer recomputed from the reweighted rows (mode="explicit")
  eager      the reference implementation's way: eager attention in every layer (prefill included) and the
             decoding output recomputed from the reweighted rows (eager model + mode="explicit")
The modes run interleaved round by round, median of --repeats, so load drift on a shared machine hits all alike.

Model: the tiny Qwen2.5-VL of `trl_attention.tiny` widened to Qwen2.5-0.5B's text geometry by default (hidden 896,
MLP 4864, 14 query / 2 key-value heads of dim 64), --layers decoder layers, random weights; images of --image_size px
(448 px -> 256 visual tokens each).

Usage: python benchmarks/vrga_generation.py [--batch 4] [--new_tokens 32] [--layers 8] [--image_size 448]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from trl_attention.tiny import build_processor, build_tiny_vlm, make_grounding_dataset
from trl_attention.vrga import VRGAConfig, enable_vrga


def build(args):
    text = {
        "hidden_size": args.hidden,
        "intermediate_size": args.mlp,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
    }
    model, _ = build_tiny_vlm(seed=0, **text)
    processor = build_processor(max_pixels=args.image_size**2)
    rows = make_grounding_dataset(args.batch, seed=0, image_size=args.image_size)
    texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    texts[0] += "Answer with one word."  # different lengths: left padding is exercised
    inputs = processor(text=texts, images=[r["image"] for r in rows], return_tensors="pt", padding=True)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    return model.to(args.device), eager.to(args.device), inputs.to(args.device)


def run(model, inputs, args, config=None):
    kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if config is None:
        out = model.generate(**inputs, **kwargs)
    else:
        with enable_vrga(model, config):
            out = model.generate(**inputs, **kwargs)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--mlp", type=int, default=4864)
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv_heads", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=448)
    parser.add_argument("--gamma", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sdpa, eager, inputs = build(args)
    modes = {
        "plain": (sdpa, None),
        "vrga": (sdpa, VRGAConfig(gamma=args.gamma)),
        "explicit": (sdpa, VRGAConfig(gamma=args.gamma, mode="explicit")),
        "eager": (eager, VRGAConfig(gamma=args.gamma, mode="explicit")),
    }
    times = {name: [] for name in modes}
    outputs = {}
    with torch.no_grad():
        for name, (model, cfg) in modes.items():  # warm-up
            outputs[name] = run(model, inputs, args, cfg)[1]
        for _ in range(args.repeats):
            for name, (model, cfg) in modes.items():
                times[name].append(run(model, inputs, args, cfg)[0])
    tokens = args.batch * args.new_tokens
    prompt = inputs["input_ids"].shape[1]
    images = int((inputs["input_ids"][0] == sdpa.config.image_token_id).sum())
    print(
        f"device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, prompt {prompt} tokens "
        f"({images} visual per image), {args.new_tokens} new tokens, {args.layers} layers, hidden {args.hidden}, "
        f"heads {args.heads}/{args.kv_heads}, gamma {args.gamma}, median of {args.repeats}"
    )
    base = statistics.median(times["plain"])
    print(f"{'mode':<10}{'seconds':>10}{'tokens/s':>11}{'vs plain':>10}")
    for name in modes:
        seconds = statistics.median(times[name])
        print(f"{name:<10}{seconds:>10.3f}{tokens / seconds:>11.1f}{base / seconds:>9.2f}x")
    agree = {n: bool(torch.equal(outputs[n], outputs["vrga"])) for n in ("explicit", "eager")}
    print(f"same tokens as vrga: {agree}")


if __name__ == "__main__":
    main()
