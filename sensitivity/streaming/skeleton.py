"""A Llama-family causal LM (Llama, Qwen2, Mistral) built on the meta device, with
its weights read from the folder's safetensors one decoder block at a time.

Resident: the token embedding, the final norm, the LM head (the embedding itself when
tied) and the rotary embedding (its inverse frequencies are computed, not stored).
A block holds real tensors only between `materialize(i)` and `release(i)`
(`block(i)` does both), in fp32 whatever the file stores, so its computation is
the one `AutoModelForCausalLM.from_pretrained(..., dtype=float32)` does.

What each block is called with besides its hidden state (position ids, rotary
cos/sin, the eager causal mask) is not rebuilt here: `block_calls` runs the
decoder's own forward with every block replaced by a recorder that passes its
input on, so the preamble is the installed transformers' own, whatever its
version.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sensitivity.bundle import Batch
from sensitivity.memory import release_freed_memory
from sensitivity.streaming.store import SafetensorsStore

MODEL_TYPES = ("llama", "qwen2", "mistral")  # embed_tokens, layers[i], norm, lm_head, rotary_emb
BLOCKS = "model.layers"


def _transformers():
    """transformers, after `sensitivity.models.hf` has set USE_HUB_KERNELS=NO (our package
    `kernels` would otherwise pass for the Hugging Face one)."""
    from sensitivity.models.lm_loading import _transformers as after_hf

    return after_hf()


@dataclass
class BlockCall:
    """One calibration batch as the decoder blocks see it: the embeddings (block 0's
    input) and, per block, the keyword arguments the decoder passes it."""

    embeddings: torch.Tensor
    kwargs: list[dict]


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for block `index` while the decoder's preamble runs: keeps its
    arguments and passes the hidden state on (the last one stops the forward)."""

    def __init__(self, index: int, last: bool, into: dict):
        super().__init__()
        self.index, self.last, self.into = index, last, into

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise ValueError("a decoder block took positional arguments besides its hidden state")
        self.into.setdefault("embeddings", hidden_states)
        self.into.setdefault("kwargs", []).append({k: _no_cache(v) for k, v in kwargs.items()})
        if self.last:
            raise _Stop
        return hidden_states


def _no_cache(value):
    return None if type(value).__name__.endswith("Cache") else value


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class StreamedCausalLM:
    """The meta-device skeleton of the causal LM in `folder` and its weight store."""

    def __init__(self, folder: str | os.PathLike):
        transformers = _transformers()
        self.folder = Path(folder)
        self.store = SafetensorsStore(self.folder)
        config = transformers.AutoConfig.from_pretrained(str(self.folder), local_files_only=True,
                                                         trust_remote_code=False)
        if config.model_type not in MODEL_TYPES:
            raise ValueError(f"{self.folder}: block streaming supports {', '.join(MODEL_TYPES)} "
                             f"models, not {config.model_type!r}")
        if getattr(config, "final_logit_softcapping", None):
            raise ValueError(f"{self.folder}: logit soft-capping is not streamed")
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        self.model = model.eval()
        self.config = model.config
        self.decoder = model.model
        self.blocks = self.decoder.layers
        self.tied = self.model.lm_head.weight is self.decoder.embed_tokens.weight
        self._load(self.decoder.embed_tokens, "model.embed_tokens.")
        self._load(self.decoder.norm, "model.norm.")
        if self.tied:
            self.model.lm_head.weight = self.decoder.embed_tokens.weight
        else:
            self._load(self.model.lm_head, "lm_head.")
        # the inverse frequencies: buffers computed at construction, never stored
        self.decoder.rotary_emb = type(self.decoder.rotary_emb)(config=self.config)
        self._resident: set[int] = set()

    def __len__(self) -> int:
        return len(self.blocks)

    # --- weights ------------------------------------------------------------------

    def _load(self, module: nn.Module, prefix: str) -> None:
        """Real fp32 tensors for every parameter of `module` (`prefix` + its name in the store)."""
        params = list(module.named_parameters())
        values = self.store.read_many([prefix + name for name, _ in params], torch.float32)
        for name, param in params:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            value = values.pop(prefix + name)
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{prefix + name}: stored {tuple(value.shape)}, the config "
                                 f"builds {tuple(param.shape)}")
            owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        for name, buf in module.named_buffers():
            if buf.is_meta:
                raise ValueError(f"{prefix + name}: a buffer block streaming cannot rebuild")

    @torch.no_grad()
    def reload(self, name: str) -> None:
        """A resident layer's stored weight back into its parameter, in place (a tied
        head sees it too)."""
        weight = self.model.get_submodule(name).weight
        weight.copy_(self.store.read(f"{name}.weight", torch.float32))

    def materialize(self, i: int) -> nn.Module:
        """Block i with its weights read from the store (a no-op when it already has them)."""
        if i not in self._resident:
            self._load(self.blocks[i], f"{BLOCKS}.{i}.")
            self._resident.add(i)
        return self.blocks[i]

    def release(self, i: int) -> None:
        """Block i back on the meta device: its weights are freed."""
        if i in self._resident:
            for module in self.blocks[i].modules():
                for leaf, param in list(module._parameters.items()):
                    if param is not None:
                        module._parameters[leaf] = nn.Parameter(
                            torch.empty_like(param, device="meta"), requires_grad=False)
            self._resident.discard(i)
            release_freed_memory()  # its heap pages, so the next block does not land beside them

    @contextlib.contextmanager
    def block(self, i: int, keep: bool = False) -> Iterator[nn.Module]:
        """Block i materialized inside (released after unless it was resident or `keep`)."""
        was = i in self._resident
        try:
            yield self.materialize(i)
        finally:
            if not (was or keep):
                self.release(i)

    def block_names(self, i: int) -> dict[str, nn.Module]:
        """Full module name -> module, for block i's submodules."""
        return {f"{BLOCKS}.{i}.{n}": m for n, m in self.blocks[i].named_modules() if n}

    def block_of(self, name: str) -> int | None:
        """The block holding layer `name`, None for the resident ones."""
        if not name.startswith(BLOCKS + "."):
            return None
        return int(name[len(BLOCKS) + 1:].split(".", 1)[0])

    def weight_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """The model's weights in `dtype` (a tied head counted once)."""
        return self.store.numel() * torch.empty((), dtype=dtype).element_size()

    # --- computation ----------------------------------------------------------------

    @torch.no_grad()
    def block_calls(self, batch: Batch) -> BlockCall:
        """The embeddings of `batch` and the arguments of every block, from the decoder's
        own forward with recorders in place of the blocks."""
        seen: dict = {}
        real = self.decoder.layers
        n = len(real)
        self.decoder.layers = nn.ModuleList([_Recorder(i, i == n - 1, seen) for i in range(n)])
        try:
            self.decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False)
        except _Stop:
            pass
        finally:
            self.decoder.layers = real
        if len(seen.get("kwargs", ())) != n:
            raise ValueError(f"the decoder called {len(seen.get('kwargs', ()))} of its {n} blocks")
        return BlockCall(seen["embeddings"], seen["kwargs"])

    def run_block(self, i: int, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
        """Block i (materialized) on `hidden`."""
        return _first(self.blocks[i](hidden, **call.kwargs[i]))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the last block's output: the final norm, then the LM head."""
        return self.model.lm_head(self.decoder.norm(hidden))

    @torch.no_grad()
    def logits(self, batch: Batch, keep_blocks: bool = False) -> torch.Tensor:
        """The model's next-token logits (B, T, V), one block resident at a time."""
        call = self.block_calls(batch)
        hidden = call.embeddings
        for i in range(len(self)):
            with self.block(i, keep=keep_blocks):
                hidden = self.run_block(i, hidden, call)
        return self.head(hidden)
