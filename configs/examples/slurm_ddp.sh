#!/usr/bin/env bash
# Data-parallel explorl on several nodes under SLURM: one torchrun per node, 8 processes each
# (one per GPU), torchrun's c10d rendezvous on the first node. The run folder must be on a
# filesystem every node sees (rank 0 writes it; every rank reads the checkpoint on --resume).
#   sbatch configs/examples/slurm_ddp.sh
#SBATCH --job-name=explorl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
    --rdzv_backend c10d --rdzv_endpoint "$head_node:29500" --rdzv_id "$SLURM_JOB_ID" \
    -m explorl train --config configs/examples/math_chat.yaml \
    --set train.parallel=ddp --set model.device=cuda --set model.dtype=bfloat16 \
    --out runs/math_chat_ddp "$@"
