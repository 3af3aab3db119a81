#!/usr/bin/env bash
# BERT-large MLPerf pretraining on every visible GPU, as the DeepSparkHub / NVIDIA recipe runs it:
#
#   DATA=/path/to/data bash train_bert_pretraining_amp_dist.sh [bert-pretrain train flags]
#
# DATA holds what the recipe expects:
#   2048_shards_uncompressed/   training shards part_*_of_2048.hdf5 (another <N>_shards_uncompressed/ works too)
#   eval_set_uncompressed/      the eval shard (part_eval_10k.hdf5)
#   bert_config.json            the BERT-large config
#   model.ckpt-28252.apex.pt    the MLPerf initial checkpoint ({'model': state_dict})
# The recipe (configs/bert_large_deepsparkhub.toml) comes first and your flags after it, so yours win
# (e.g. --max_steps 100).
# One process per accelerator device (GPUs: set CUDA_VISIBLE_DEVICES to choose; XPU, Ascend, Gaudi, ...
# through torch.accelerator), or one CPU process without any. Several nodes: run this on each with NNODES,
# MASTER_ADDR and MASTER_PORT set (torchrun's c10d rendezvous; node ranks are assigned when the nodes
# meet), or under Slurm with one task per node (srun --ntasks-per-node=1 ...), which sets them
# (docs/training.md, "Slurm"). MAX_RESTARTS (default 3 on one node, 10 on several) is how often a failed
# job is restarted from its newest checkpoint. With DATA unset it runs the built-in demo, which needs no
# download. CLEAR_CACHES=1 drops the OS page cache first (root).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME="train_bert_pretraining_amp_dist.sh"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PYTHON="$HERE/.venv/bin/python"; else PYTHON=python3; fi
fi

if [ -z "${DATA:-}" ]; then
    echo "$NAME: DATA is not set; running the built-in demo (bert-pretrain demo)" >&2
    exec "$PYTHON" -m bert_pretrain demo "$@"
fi
if [ ! -d "$DATA" ]; then
    echo "$NAME: error: DATA=$DATA is not a folder" >&2
    exit 2
fi

SHARDS="$DATA/2048_shards_uncompressed"
if [ ! -d "$SHARDS" ]; then
    SHARDS=""
    for candidate in "$DATA"/*_shards_uncompressed; do
        if [ -d "$candidate" ]; then SHARDS="$candidate"; break; fi
    done
fi
missing=()
[ -n "$SHARDS" ] || missing+=("2048_shards_uncompressed/ (or another <N>_shards_uncompressed/) of training shards part_*.hdf5")
[ -d "$DATA/eval_set_uncompressed" ] || missing+=("eval_set_uncompressed/ (the eval shard part_eval_10k.hdf5)")
[ -f "$DATA/bert_config.json" ] || missing+=("bert_config.json (the model config)")
[ -f "$DATA/model.ckpt-28252.apex.pt" ] || missing+=("model.ckpt-28252.apex.pt (the MLPerf initial checkpoint; to train from scratch, call bert-pretrain train without --init_checkpoint)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "$NAME: error: DATA=$DATA lacks:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    echo "  (see docs/training.md for how to make them; bert-pretrain prepare writes shards and the eval set)" >&2
    exit 2
fi

export INIT_LOSS_SCALE=${INIT_LOSS_SCALE:-1024}
DEVICES=$("$PYTHON" -c 'from bert_pretrain.devices import count; print(count())')
NPROC=${NPROC_PER_NODE:-$DEVICES}
if [ "$NPROC" -lt 1 ]; then NPROC=1; fi
RDZV_CONF=()
if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_NNODES:-}" ]; then
    # Under Slurm: the step's nodes, this node's place among them and the first node's address (the
    # rendezvous host, so node 0 hosts its store: no guessing from host names); what is set by hand wins.
    NODE_RANK=${SLURM_NODEID:-0}
    if [ -z "${NNODES:-}" ]; then
        NNODES=$SLURM_NNODES
        if [ "$NNODES" -gt 1 ] && [ -z "${SLURM_STEP_ID:-}" ]; then
            echo "$NAME: error: Slurm gave this job $NNODES nodes, but this is its batch script, which runs on" \
                 "the first node only; start it on every node: srun --ntasks-per-node=1 bash $NAME" >&2
            exit 2
        fi
    fi
    if [ "$NNODES" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
        nodes=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
        MASTER_ADDR=$(scontrol show hostnames "$nodes" 2>/dev/null | head -n 1 || true)
        if [ -z "$MASTER_ADDR" ]; then
            echo "$NAME: error: could not read the first node of Slurm's node list '$nodes' (scontrol show" \
                 "hostnames); set MASTER_ADDR to a host every node can reach" >&2
            exit 2
        fi
        RDZV_CONF=(--rdzv_conf "is_host=$([ "$NODE_RANK" = 0 ] && echo true || echo false)")
    fi
    MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}  # two jobs sharing a node, two ports
    RDZV_ID=${RDZV_ID:-slurm-$SLURM_JOB_ID}
fi
NNODES=${NNODES:-1}
if [ "$NNODES" -gt 1 ]; then
    if [ -z "${MASTER_ADDR:-}" ]; then
        echo "$NAME: error: NNODES=$NNODES needs MASTER_ADDR (a host every node can reach) and MASTER_PORT" >&2
        exit 2
    fi
    RENDEZVOUS=(--nnodes "$NNODES" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}"
                --rdzv_id "${RDZV_ID:-bert-pretrain}" "${RDZV_CONF[@]}")
else
    RENDEZVOUS=(--standalone)
fi
# Automatic recovery: when a process dies, torchrun starts the workers again, each continuing from the
# newest checkpoint in its --output_dir (or from the start before the first one), up to MAX_RESTARTS times.
# A failure that repeats (a corrupt shard, a bug) costs a restart each time, so one node gets few; on
# several nodes independent losses (a host, a link) grow with the node count, so more.
if [ "$NNODES" -gt 1 ]; then MAX_RESTARTS=${MAX_RESTARTS:-10}; else MAX_RESTARTS=${MAX_RESTARTS:-3}; fi
case "$MAX_RESTARTS" in
    ''|*[!0-9]*) echo "$NAME: error: MAX_RESTARTS=$MAX_RESTARTS is not a whole number; pass 0 or more (0: no" \
                      "restarts)" >&2
                 exit 2 ;;
esac
echo "$NAME: $NNODES node(s) x $NPROC process(es)${NODE_RANK:+ (Slurm node $NODE_RANK)}; shards $SHARDS; up to" \
     "$MAX_RESTARTS restart(s)" >&2

# A new results folder per run; --resume_from_checkpoint (without an --output_dir of yours) continues
# in the newest one.
OUTPUT_DIR="./results/train_log_$(date +%m%d%H%M%S)"
for arg in "$@"; do
    case "$arg" in
        --resume_from_checkpoint*)
            newest=$(ls -1dt ./results/train_log_* 2>/dev/null | head -n 1 || true)
            if [ -n "$newest" ]; then OUTPUT_DIR="$newest"; fi ;;
    esac
done
# CLEAR_CACHES=1 drops this node's OS page cache first, as MLPerf submissions do before each run, and
# the MLPerf log says so (cache_clear true).
CACHE_FLAGS=()
if [ "${CLEAR_CACHES:-0}" = "1" ]; then
    if ! { sync && echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
        echo "$NAME: error: CLEAR_CACHES=1 could not write /proc/sys/vm/drop_caches; run as root, or drop" \
             "the caches yourself and pass --cache_cleared" >&2
        exit 2
    fi
    CACHE_FLAGS=(--cache_cleared)
fi
# torchrun gives workers 30 s between SIGTERM and SIGKILL by default: too little for BERT-large to reach
# its next sync point and write a final checkpoint (older torchruns lack the option and keep their 30 s).
SHUTDOWN=()
if "$PYTHON" -m torch.distributed.run --help 2>/dev/null | grep -q -- "--shutdown_timeout"; then
    SHUTDOWN=(--shutdown_timeout "${SHUTDOWN_TIMEOUT:-300}")
fi

# The recipe is configs/bert_large_deepsparkhub.toml (the DeepSparkHub flags, except its fixed eval
# interval: left out, evals follow the MLPerf rule for the global batch, as compliance requires). Flags
# given here come after it and win; a --config of yours replaces the recipe file.
# bert_pretrain.launch is torchrun exiting with the failed worker's code (2 for bad input), without
# torchrun's traceback.
exec "$PYTHON" -m bert_pretrain.launch "${RENDEZVOUS[@]}" "${SHUTDOWN[@]}" --max_restarts "$MAX_RESTARTS" \
    --nproc_per_node "$NPROC" \
    -m bert_pretrain train --config "$HERE/configs/bert_large_deepsparkhub.toml" \
    --init_checkpoint "$DATA/model.ckpt-28252.apex.pt" --input_dir "$SHARDS" \
    --bert_config_path "$DATA/bert_config.json" --eval_dir "$DATA/eval_set_uncompressed" \
    --output_dir "$OUTPUT_DIR" "${CACHE_FLAGS[@]}" "$@"
