"""Where this process computes: the device ``model.device`` names (under torchrun, the GPU of the
process's ``LOCAL_RANK``), and a free local port for a rendezvous of ``torch.distributed``."""
from __future__ import annotations

import os

import torch


def resolve_device(setting: str) -> torch.device:
    """``model.device``: ``auto`` is CUDA when present, else the CPU; under torchrun each
    process takes the GPU of its ``LOCAL_RANK``."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("model.device: cuda, but no CUDA device is visible to this process; use auto or cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise ValueError(f"model.device: {setting}, but this process is local rank {local} and only "
                         f"{torch.cuda.device_count()} CUDA device(s) are visible: launch at most one process per "
                         "GPU (torchrun --nproc_per_node), or set model.device: cpu")
    return torch.device("cuda", local)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
