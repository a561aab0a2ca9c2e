"""A worker's encoders, one per device, shared evenly by its threads (several GPUs on one machine)."""

from __future__ import annotations

import threading

import pytest
import torch

from encoder.pooled_encoder import replica_devices
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
    first, second = (encoder.encode(["a page about GPUs", "another"]).embeddings for encoder in replicas.encoders)
    assert (first == second).all()
    replicas.give_back(replicas.encoders[1])  # a DoFn torn down: the next thread takes the replica it held
    replicas.give_back(replicas.encoders[1])
    assert [replicas.encoders.index(replicas.take()) for _ in range(4)] == [1, 1, 1, 0]  # held 3 and 0, then 3 and 3


def test_replica_devices_without_gpus():
    assert replica_devices("cpu") == [torch.device("cpu")]
    assert handler_devices("cpu") == 1
    if not torch.cuda.is_available():
        assert replica_devices("auto") == [torch.device("cpu")]
        with pytest.raises(ValueError, match="no CUDA device is available"):
            replica_devices("cuda")


def handler_devices(device: str) -> int:
    return len(EncoderHandler(model=None, device=device).load_replicas().encoders)


def test_threads_sharing_an_encoder_take_turns_a_chunk_each(model_path):
    """Each batch is sized to the device's memory for one batch: two threads' chunks do not run
    through the model at once, and each gets the vectors it would alone."""
    encoder = EncoderHandler(model=model_path, device="cpu").load_model()
    texts = {name: [f"{name} page {i} about " + "GPUs and queues " * (i % 7) for i in range(40)] for name in "ab"}
    alone = {name: encoder.encode(chunk, token_budget=128).embeddings for name, chunk in texts.items()}
    seen, got, lock = [], {}, threading.Lock()

    def encode(name: str) -> None:
        def on_batch(rows: int) -> None:
            with lock:
                seen.append(name)

        tokenized = encoder.tokenizer.encode(texts[name])
        got[name] = encoder.encode_tokenized(tokenized, token_budget=128, on_batch=on_batch).embeddings

    threads = [threading.Thread(target=encode, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = seen[0]
    turns = [name for i, name in enumerate(seen) if i == 0 or seen[i - 1] != name]
    assert turns == [first, "b" if first == "a" else "a"] and len(seen) > 10
    assert all((got[name] == alone[name]).all() for name in "ab")
