#!/usr/bin/env bash
# Run `distsched train` under torchrun (no Ray): one node, or many nodes with c10d rendezvous.
#
# One node (2 processes on 127.0.0.1):
#   launch/torchrun.sh examples/digits_qsr.yaml [RUN_DIR]
# Many nodes: run the same command on every node, with the same settings, RUN_DIR on shared storage:
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0.example MASTER_PORT=29500 RUN_ID=exp1 LOCAL_ADDR=node0.example \
#     launch/torchrun.sh examples/digits_qsr.yaml /shared/runs/exp1
# (NODE_RANK=1, 2, 3 and each node's own LOCAL_ADDR on the others.) Two hosts on one machine, in the
# network namespaces of launch/testbed.sh: see the README ("Several hosts on one machine").
#
# Settings (environment):
#   NPROC_PER_NODE  processes per node (default: the number of GPUs, or 2 without GPUs)
#   NNODES          number of nodes (default 1)
#   MASTER_ADDR     rendezvous host, the c10d store runs there (default 127.0.0.1)
#   MASTER_PORT     rendezvous port (default 29500)
#   RUN_ID          rendezvous id, the same on every node (default distsched)
#   NODE_RANK       this node's index (0 = the node at MASTER_ADDR, which hosts the rendezvous store);
#                   default SLURM_NODEID under srun. Without it torchrun guesses the store host by
#                   matching MASTER_ADDR against the hostname, which fails for an address that the
#                   hostname does not resolve to. Ranks within the job are still assigned by the rendezvous.
#   LOCAL_ADDR      this node's address for the process group (default 127.0.0.1 on one node)
#   GLOO_SOCKET_IFNAME  interface of gloo's sockets (CPU); default: the interface holding LOCAL_ADDR
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
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-}}
if [[ "$NNODES" -eq 1 ]]; then LOCAL_ADDR=${LOCAL_ADDR:-127.0.0.1}; fi
if [[ -n "$NODE_RANK" && ! "$NODE_RANK" =~ ^[0-9]+$ ]]; then
  echo "$0: NODE_RANK must be an integer >= 0, got '$NODE_RANK'" >&2
  exit 2
fi
# gloo binds to the address the hostname resolves to unless told otherwise (often 127.0.x.1, which
# the other nodes cannot reach): use the interface that holds LOCAL_ADDR.
if [[ -z "${GLOO_SOCKET_IFNAME:-}" && -n "${LOCAL_ADDR:-}" && "$NNODES" -gt 1 ]] && command -v ip >/dev/null 2>&1; then
  LOCAL_IP=$(getent ahostsv4 "$LOCAL_ADDR" 2>/dev/null | awk 'NR == 1 {print $1}' || true)
  IFACE=$(ip -o -4 addr show 2>/dev/null | awk -v a="${LOCAL_IP:-$LOCAL_ADDR}" '{split($4, p, "/")} p[1] == a {print $2; exit}')
  if [[ -n "$IFACE" ]]; then export GLOO_SOCKET_IFNAME=$IFACE; fi
fi
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
if [[ -n "$NODE_RANK" ]]; then args+=(--rdzv-conf="is_host=$([[ "$NODE_RANK" -eq 0 ]] && echo 1 || echo 0)"); fi

# the driver's checks before torchrun starts (a user's mistake: one line, exit 2, nothing written; inside
# torchrun's workers it would end in torchrun's traceback). Node 0 only: on the others the run folder may
# already hold this very run, made by node 0's rank 0.
if [[ "$NNODES" -eq 1 || "$NODE_RANK" == 0 ]]; then
  "$PYTHON" -m distsched train "$CONFIG" --launcher torchrun --run-dir "$RUN_DIR" --check
fi

exec "$PYTHON" -m torch.distributed.run "${args[@]}" \
  -m distsched train "$CONFIG" --launcher torchrun --run-dir "$RUN_DIR"
