"""A worker's encoders, one per device, shared evenly by its threads (several GPUs on one machine)."""

from __future__ import annotations

import threading

import pytest
import torch

from encoder.pooled_encoder import cuda_token_budget, replica_devices
from transforms.embed import EncoderHandler, EncoderReplicas


def test_threads_take_the_least_held_replica(model_path):
    handler = EncoderHandler(model=model_path, device="cpu")
    replicas = EncoderReplicas([handler.load_model(), handler.load_model()])
    taken, lock = [], threading.Lock()

    def take() -> None:
        encoder = replicas.take()
        with lock:
            taken.append(replicas.encoders.index(encoder))

    threads = [threading.Thread(target=take) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == [0, 0, 0, 1, 1]
    assert [replicas.sharers(encoder) for encoder in replicas.encoders] == [3, 2]
    first, second = (encoder.encode(["a page about GPUs", "another"]).embeddings for encoder in replicas.encoders)
    assert (first == second).all()
    replicas.give_back(replicas.encoders[1])  # a DoFn torn down: the next thread takes the replica it held
    replicas.give_back(replicas.encoders[1])
    assert replicas.sharers(replicas.encoders[1]) == 0
    assert [replicas.encoders.index(replicas.take()) for _ in range(4)] == [1, 1, 1, 0]  # held 3 and 0, then 3 and 3
    assert [replicas.sharers(encoder) for encoder in replicas.encoders] == [4, 3]


def test_threads_sharing_a_gpu_share_its_token_budget():
    """16 GiB free; a bge-large-shaped model in bfloat16 (hidden 1024, feed-forward 4096) and a MiniLM-shaped one."""
    free = 16 * 2**30
    large, small = 4 * 2 * (6 * 1024 + 2 * 4096), 4 * 2 * (6 * 384 + 2 * 1536)
    assert [cuda_token_budget(free, large, sharers) for sharers in (1, 2, 4, 64)] == [131072, 74898, 37449, 8192]
    assert [cuda_token_budget(free, small, sharers) for sharers in (1, 2, 4)] == [131072, 131072, 99864]
    assert cuda_token_budget(free, large, 0) == 131072  # no holder counted: as one


def test_replica_devices_without_gpus():
    assert replica_devices("cpu") == [torch.device("cpu")]
    assert handler_devices("cpu") == 1
    if not torch.cuda.is_available():
        assert replica_devices("auto") == [torch.device("cpu")]
        with pytest.raises(ValueError, match="no CUDA device is available"):
            replica_devices("cuda")


def handler_devices(device: str) -> int:
    return len(EncoderHandler(model=None, device=device).load_replicas().encoders)
