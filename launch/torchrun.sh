#!/usr/bin/env bash
# Run `distsched train` under torchrun (no Ray): one node, or many nodes with c10d rendezvous.
#
# One node (2 processes on 127.0.0.1):
#   launch/torchrun.sh examples/digits_qsr.yaml [RUN_DIR]
# Many nodes: run the same command on every node, with the same settings, RUN_DIR on shared storage:
#   NNODES=4 MASTER_ADDR=node0.example MASTER_PORT=29500 RUN_ID=exp1 \
#     launch/torchrun.sh examples/digits_qsr.yaml /shared/runs/exp1
#
# Settings (environment):
#   NPROC_PER_NODE  processes per node (default: the number of GPUs, or 2 without GPUs)
#   NNODES          number of nodes (default 1)
#   MASTER_ADDR     rendezvous host, the c10d store runs there (default 127.0.0.1)
#   MASTER_PORT     rendezvous port (default 29500)
#   RUN_ID          rendezvous id, the same on every node (default distsched)
#   LOCAL_ADDR      this node's address for the process group (default 127.0.0.1 on one node)
#   MAX_RESTARTS    torchrun restarts of failed workers; they resume from the last checkpoint (default 0)
#   PYTHON          interpreter with distsched installed (default .venv/bin/python, else python3)
#   NCCL_ENV        NCCL settings sourced when GPUs are used (default launch/nccl.env)
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG.yaml [RUN_DIR]" >&2
  exit 2
fi
CONFIG=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
RUN_DIR=${2:-runs/$(basename "$CONFIG" .yaml)-$(date +%Y%m%d-%H%M%S)}

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
if command -v nvidia-smi >/dev/null 2>&1; then GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); else GPUS=0; fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$([[ "$GPUS" -gt 0 ]] && echo "$GPUS" || echo 2)}
NNODES=${NNODES:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RUN_ID=${RUN_ID:-distsched}
MAX_RESTARTS=${MAX_RESTARTS:-0}
if [[ "$NNODES" -eq 1 ]]; then LOCAL_ADDR=${LOCAL_ADDR:-127.0.0.1}; fi
NCCL_ENV=${NCCL_ENV:-$HERE/nccl.env}

if [[ "$GPUS" -gt 0 && -f "$NCCL_ENV" ]]; then
  set -a
  # shellcheck source=/dev/null
  source "$NCCL_ENV"
  set +a
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MASTER_ADDR

args=(
  --nnodes="$NNODES"
  --nproc-per-node="$NPROC_PER_NODE"
  --rdzv-backend=c10d
  --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"
  --rdzv-id="$RUN_ID"
  --max-restarts="$MAX_RESTARTS"
)
if [[ -n "${LOCAL_ADDR:-}" ]]; then args+=(--local-addr="$LOCAL_ADDR"); fi

exec "$PYTHON" -m torch.distributed.run "${args[@]}" \
  -m distsched train "$CONFIG" --launcher torchrun --run-dir "$RUN_DIR"
