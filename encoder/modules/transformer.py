"""A transformers model that turns token ids into token vectors, as sentence-transformers' Transformer."""

from __future__ import annotations

import inspect

import numpy as np
import torch
import transformers
from transformers import AutoModel

from encoder.attention import unread_mask_sdpa
from encoder.model_folder import ENCODER_ONLY_CLASSES, ModelFolderError, TransformerSpec
from encoder.modules.features import Features
from encoder.tokens import Tokenized, TokenTypes

# Families whose transformers code turns the 2D mask into a plain bidirectional SDPA mask (no
# causal, sliding-window or bias terms), which it takes as given when it is already 4D. Given the
# keys' mask alone, (rows, 1, 1, width), the model skips materialising a (rows, 1, width, width)
# mask on every batch: a 1-layer, 32-wide BERT ran 1.2-1.3x faster on CPU, identical vectors
# (all-MiniLM-L6-v2: no measurable change). Each is checked against sentence-transformers in
# tests/test_model_families.py. T5 adds its position bias where the mask is true. A mask taken as given
# is never read to decide whether to build one: on CUDA such a read makes the host wait for the GPU
# once per batch (encoder.attention).
KEY_MASK_TYPES = frozenset({"bert", "distilbert", "electra", "roberta", "xlm-roberta", "t5"})
# Families transformers runs with eager attention alone, adding the mask to the scores: the keys' mask,
# given as those additions (0, or the dtype's least value on padding), is used as given too.
ADDITIVE_KEY_MASK_TYPES = frozenset({"mpnet"})
# Tensors a checkpoint may lack: the pooler head after the token vectors, whose output sentence-transformers
# never reads (checkpoints saved without it are common). Any other missing tensor transformers fills at
# random, silently: a model nobody trained, and another one in every worker process.
UNUSED_PREFIXES = ("pooler.",)


class Transformer(torch.nn.Module):
    """`unread_masks` (on CUDA): no mask is read on the device to decide whether to build it."""

    def __init__(self, spec: TransformerSpec, dtype: torch.dtype, unread_masks: bool = False) -> None:
        super().__init__()
        encoder_only = ENCODER_ONLY_CLASSES.get(spec.model_type)
        model_class = getattr(transformers, encoder_only) if encoder_only else AutoModel
        try:  # tensors of other sizes than the config's are loaded at random too, and refused below by name
            self.model, loading = model_class.from_pretrained(
                spec.path,
                dtype=dtype,
                use_safetensors=True,
                trust_remote_code=False,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
        except (ValueError, OSError) as e:  # a model_type this transformers does not know, a file it cannot read
            said = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelFolderError(f"{spec.path}: transformers cannot load it: {said}") from e
        self.model.eval()
        missing = sorted(key for key in loading["missing_keys"] if not key.startswith(UNUSED_PREFIXES))
        if missing:
            raise ModelFolderError(
                f"{spec.path}: its weights lack {len(missing)} of the model's tensors ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); transformers would fill them at random"
            )
        if mismatched := sorted(loading["mismatched_keys"]):
            key, stored, configured = mismatched[0]
            raise ModelFolderError(
                f"{spec.path}: {len(mismatched)} of its weights are not of the sizes its config gives ({key} is "
                f"{list(stored)} in the weights, {list(configured)} by the config); transformers would fill "
                "them at random"
            )
        if isinstance(getattr(self.model, "pooler", None), torch.nn.Module):
            # The pooler head (BERT, RoBERTa, XLM-RoBERTa, MPNet) turns the first token's vector into an output
            # nothing reads; these families' code skips it when it is None. A linear layer and a tanh per batch
            # less: a 1-layer, 32-wide BERT's forward pass ran about 3% faster on CPU.
            self.model.pooler = None
        if hasattr(self.model.config, "use_cache"):  # decoder-only embedders: no key/value cache to keep
            self.model.config.use_cache = False
        # Set by the encoder from its tokenizer: its type ids where it gives them (passed on where the model's
        # forward names them, as sentence-transformers passes what the tokenizer gives).
        self.token_types: TokenTypes | None = None
        self.reads_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        config = self.model.config
        bidirectional = not getattr(config, "is_decoder", False)
        self.key_mask = spec.model_type in KEY_MASK_TYPES and bidirectional and config._attn_implementation == "sdpa"
        self.additive_key_mask = (
            spec.model_type in ADDITIVE_KEY_MASK_TYPES and bidirectional and config._attn_implementation == "eager"
        )
        # Other families that take transformers' attention functions (decoders, sliding windows) get SDPA
        # with a mask builder that does not read.
        self.unread_masks = (
            unread_masks
            and not (self.key_mask or self.additive_key_mask)
            and getattr(type(self.model), "_supports_attention_backend", False)
        )
        if self.unread_masks:
            self.model.set_attn_implementation(unread_mask_sdpa())

    def collate(self, tokenized: Tokenized, rows: np.ndarray, width: int, pad_id: int) -> Features:
        """Token ids and attention mask of `rows`, padded on the right to `width`, whichever side the tokenizer
        pads on: each row's tokens then sit at positions 0, 1, 2 ... as in the text alone, so its vector is the
        one the text gets alone (a query embedded at search time), whatever rows share its batch. Padded on the
        left, a model with absolute positions (BERT, MPNet, GPT-2) read every token at another position, and
        a text's vector changed with the longest text of its batch: cosine 0.43 against its own with a
        left-padding BERT tokenizer. Models with relative positions (rotary: Qwen3, Gemma, Llama) give the same
        vectors on either side.

        A boolean mask places every row's ids at once: numpy fills it in row order.
        """
        lengths = tokenized.lengths[rows]
        mask = np.arange(width) < lengths[:, None]
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        input_ids[mask] = tokenized.of(rows)
        features = Features(torch.from_numpy(input_ids), torch.from_numpy(mask.astype(np.int64)))
        if self.token_types is not None and self.reads_token_types and not self.token_types.zero:
            features.token_type_ids = torch.from_numpy(self.token_types.ids(lengths, width))
        return features

    def forward(self, features: Features) -> Features:
        type_ids = features.token_type_ids
        if type_ids is None and self.token_types is not None and self.reads_token_types:  # all 0 (collate)
            type_ids = torch.zeros_like(features.input_ids)
        types = {} if type_ids is None else {"token_type_ids": type_ids}
        mask = features.attention_mask
        if self.key_mask:
            mask = mask.bool()[:, None, None, :]
        elif self.additive_key_mask:
            mask = torch.where(mask.bool()[:, None, None, :], 0.0, torch.finfo(self.model.dtype).min).to(
                self.model.dtype
            )
        output = self.model(input_ids=features.input_ids, attention_mask=mask, **types)
        features.token_embeddings = output.last_hidden_state
        return features
