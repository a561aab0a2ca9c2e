"""Attention masks that transformers builds without reading their values, so that a CUDA host never waits.

To decide whether a batch needs a mask at all (none lets SDPA take its flash kernel), transformers'
mask builders read the padding mask on the device (`padding_mask.all()`): a copy to the host, which
waits for every kernel queued before it. Once per batch, that drains the GPU's queue, and the card
idles while the host pads and launches the next batch. On CPU the read costs nothing.

`UNREAD_MASK_SDPA` is transformers' own SDPA attention with its own mask builder told never to leave
the mask out, so never to read it: a batch without padding gets a mask too, which costs SDPA its flash
kernel there (batches cut by tokens nearly always hold some padding, and then get a mask anyway). A
batch given no padding mask is not a way out: decoders then read their position ids, looking for
packed sequences. It is registered through transformers' documented interfaces, under a name of its
own, so that no other model in the process changes.
"""

from __future__ import annotations

import functools

UNREAD_MASK_SDPA = "sdpa_unread_mask"


@functools.cache
def unread_mask_sdpa() -> str:
    """`UNREAD_MASK_SDPA`, registered on first use: importing transformers' attention code takes about
    two seconds, which a process pays only once it loads a model that runs it."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def always_built(*args, **kwargs):
        return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False})

    AttentionInterface.register(UNREAD_MASK_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(UNREAD_MASK_SDPA, always_built)
    return UNREAD_MASK_SDPA
