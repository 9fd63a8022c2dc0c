#!/usr/bin/env bash
# Launch a scale-out recipe with DeepSpeed: `bash examples/launch.sh RECIPE [script flags...]`
#   ral      RAL (AttentionGRPOTrainer) on Qwen2.5-VL-7B: examples/ral_grpo.py (8 rollouts/prompt, tower frozen)
#   distill  Qwen2.5-VL-32B -> 7B attention distillation: examples/attention_distill.py (teacher sharded by ZeRO-3)
# Environment:
#   ZERO=zero3|zero2|zero3_offload   shipped DeepSpeed config (default zero3; see `trl-attention configs`)
#   LAUNCHER=accelerate|deepspeed|torchrun   (default accelerate)
#   GPUS=8 (per node)  NNODES=1  NODE_RANK=0  MASTER_ADDR=127.0.0.1  MASTER_PORT=29500   (multi-node: run on each)
#   DRY_RUN=1   print the command instead of running it
#   TRL_ATTENTION=path/to/trl-attention (default: on PATH), or TRL_ATTENTION_CONFIGS=<configs dir> to skip the CLI
# The training script always gets --deepspeed <shipped JSON>, which TrainingArguments applies under every
# launcher (and which takes precedence over the accelerate YAML's DeepSpeed keys).
set -euo pipefail
cd "$(dirname "$0")/.."
recipe="${1:?usage: launch.sh ral|distill [flags...]}"
shift
case "$recipe" in
  ral) script=examples/ral_grpo.py; defaults=(--output_dir out/ral-7b) ;;
  distill) script=examples/attention_distill.py; defaults=(--output_dir out/distill-32b-7b) ;;
  *) echo "launch.sh: unknown recipe '$recipe' (ral, distill)" >&2; exit 2 ;;
esac
ZERO="${ZERO:-zero3}" GPUS="${GPUS:-8}" NNODES="${NNODES:-1}" NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}" MASTER_PORT="${MASTER_PORT:-29500}"
if [ -n "${TRL_ATTENTION_CONFIGS:-}" ]; then   # a directory laid out like trl_attention/configs (skips the CLI)
  ds_config="$TRL_ATTENTION_CONFIGS/deepspeed/$ZERO.json"
else
  ds_config="$(${TRL_ATTENTION:-trl-attention} configs --path "$ZERO")"
fi
accelerate_configs="$(dirname "$(dirname "$ds_config")")/accelerate"   # installed next to the DeepSpeed JSONs
args=("$script" --deepspeed "$ds_config" "${defaults[@]}" "$@")
case "${LAUNCHER:-accelerate}" in
  accelerate)
    if [ "$NNODES" -gt 1 ]; then
      cmd=(accelerate launch --config_file "$accelerate_configs/zero3_multinode.yaml" --num_machines "$NNODES"
           --num_processes "$((NNODES * GPUS))" --machine_rank "$NODE_RANK" --main_process_ip "$MASTER_ADDR"
           --main_process_port "$MASTER_PORT" "${args[@]}")
    else
      cmd=(accelerate launch --config_file "$accelerate_configs/$ZERO.yaml" --num_processes "$GPUS" "${args[@]}")
    fi ;;
  deepspeed)
    cmd=(deepspeed --num_nodes "$NNODES" --num_gpus "$GPUS" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
    [ "$NNODES" -gt 1 ] && cmd+=(--no_ssh --node_rank "$NODE_RANK")
    cmd+=("${args[@]}") ;;
  torchrun)
    cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR"
         --master_port "$MASTER_PORT" "${args[@]}") ;;
  *) echo "launch.sh: unknown LAUNCHER '${LAUNCHER}' (accelerate, deepspeed, torchrun)" >&2; exit 2 ;;
esac
if [ -n "${DRY_RUN:-}" ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
