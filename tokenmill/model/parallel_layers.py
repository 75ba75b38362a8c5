"""Layers split across tensor-parallel ranks (Megatron-LM's scheme, as vLLM uses it).

- Column-parallel: each rank holds some output rows; a merged one (q | k | v, gate | up) holds
  its rows of each shard (`ShardedMergedLinear`). No communication: the next layer takes the split.
- Row-parallel (`RowParallelLinear`, o_proj and down_proj): each rank holds the input columns
  that match the split before it; the partial products are summed by one all-reduce.
- Vocabulary-parallel embedding and LM head: each rank holds some vocabulary rows (the vocabulary
  padded to a multiple of the ranks); the embedding's lookups are summed by an all-reduce (a rank
  contributes zeros for tokens outside its rows), the logits gathered side by side.

With one rank each is its plain counterpart: same parameters, same products, no communication.
Each parameter's weight_loader takes the whole checkpoint tensor and keeps this rank's part;
`rank_part` cuts a quantized matrix the same way, in its packed form. Quantization swaps the
product of a layer that communicates (`quantized`), so that its all-reduce stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tokenmill.distributed.group import TensorParallel
from tokenmill.model.layers import Linear, MergedLinear, check_shape
from tokenmill.quant.tensor import QuantizedTensor


class ShardedMergedLinear(MergedLinear):
    """A MergedLinear whose shards are each a part of a checkpoint matrix: `sources` gives, per
    shard, the checkpoint matrix's row count and the first row of this rank's part (its row count
    is the shard's output size here)."""

    def __init__(self, in_features: int, output_sizes: Sequence[int], shard_ids: Sequence[str],
                 sources: Sequence[tuple[int, int]], bias: bool = False) -> None:  # fmt: skip
        super().__init__(in_features, output_sizes, shard_ids, bias)
        self.sources = dict(zip(shard_ids, sources))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is not None:
            full_rows, _ = self.sources[shard_id]
            check_shape(torch.Size([full_rows, *param.shape[1:]]), loaded, f"shard {shard_id!r}")
            loaded = self.output_part(loaded, shard_id)
        super().weight_loader(param, loaded, shard_id)

    def output_part(self, loaded: torch.Tensor, shard_id: str) -> torch.Tensor:
        """This rank's rows of a shard's checkpoint matrix (all of its rows, with one rank)."""
        return loaded.narrow(0, self.sources[shard_id][1], self.shard_rows(shard_id)[1])

    def rank_part(self, loaded: QuantizedTensor, shard_id: str | None) -> QuantizedTensor:
        return loaded if shard_id is None else self.output_part(loaded, shard_id)


class RowParallelLinear(Linear):
    """This rank's input columns [first, first + in_features) of a checkpoint matrix; the outputs
    are summed over ranks (a bias, if any, added once, after the sum)."""

    def __init__(self, in_features: int, out_features: int, first_column: int, tp: TensorParallel) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.first_column, self.tp = first_column, tp
        self.weight.weight_loader = self.weight_loader
        self.product: nn.Module | None = None  # a quantized layer computing the partial product in its place

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        check_shape(torch.Size([self.out_features, self.in_features * self.tp.size]), loaded, "tensor")
        part = self.input_part(loaded)
        check_shape(param.data, part, "tensor")
        param.data.copy_(part)

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's part of the product, before the sum over ranks (where LoRA adds its own)."""
        return super().forward(x) if self.product is None else self.product(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(self.partial(x))

    def input_part(self, loaded: torch.Tensor) -> torch.Tensor:
        """This rank's input columns of a [rows, in_features * ranks] checkpoint matrix."""
        return loaded.narrow(1, self.first_column, self.in_features)

    def rank_part(self, loaded: QuantizedTensor, shard_id: None = None) -> QuantizedTensor:
        return self.input_part(loaded)

    def quantized(self, layer: nn.Module) -> nn.Module:
        """What replaces this layer once quantized: the quantized layer itself with one rank; else
        this layer, its float weight dropped, computing its part with the quantized layer."""
        if self.tp.size == 1:
            return layer
        self.product, self.weight = layer, None
        return self


class VocabParallelEmbedding(nn.Embedding):
    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel) -> None:
        self.first, rows = tp.vocab_rows(vocab_size)
        super().__init__(rows, hidden_size)
        self.vocab_size, self.tp = vocab_size, tp
        self.weight.weight_loader = self.weight_loader

        self.lookup: nn.Module | None = None  # a quantized embedding reading the rows in its place

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        load_vocab_rows(param, loaded, self.first, self.vocab_size)

    def rank_part(self, loaded: QuantizedTensor, shard_id: None = None) -> QuantizedTensor:
        return quantized_vocab_rows(loaded, self.first, self.num_embeddings, self.vocab_size, self.tp)

    def quantized(self, embedding: nn.Module) -> nn.Module:
        """As RowParallelLinear.quantized: with several ranks, this layer reading its rows from embedding."""
        if self.tp.size == 1:
            return embedding
        self.lookup, self.weight = embedding, None
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return super().forward(input_ids)
        local = input_ids - self.first
        mine = (local >= 0) & (local < self.num_embeddings)
        local = local.clamp(0, self.num_embeddings - 1)
        rows = F.embedding(local, self.weight) if self.lookup is None else self.lookup(local)
        return self.tp.all_reduce(rows * mine.unsqueeze(-1))


class ParallelLMHead(Linear):
    """The LM head over this rank's vocabulary rows; `gather_logits` joins every rank's (after
    quantization may have replaced this layer)."""

    def __init__(self, hidden_size: int, vocab_size: int, tp: TensorParallel) -> None:
        self.first, rows = tp.vocab_rows(vocab_size)
        super().__init__(hidden_size, rows, bias=False)
        self.vocab_size, self.tp = vocab_size, tp
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        load_vocab_rows(param, loaded, self.first, self.vocab_size)

    def rank_part(self, loaded: QuantizedTensor, shard_id: None = None) -> QuantizedTensor:
        return quantized_vocab_rows(loaded, self.first, self.out_features, self.vocab_size, self.tp)


def gather_logits(local: torch.Tensor, vocab_size: int, tp: TensorParallel) -> torch.Tensor:
    """Every rank's vocabulary rows' logits side by side, the padding past the vocabulary cut."""
    return tp.all_gather(local)[..., :vocab_size]


def quantized_vocab_rows(loaded: QuantizedTensor, first: int, rows: int, vocab_size: int,
                         tp: TensorParallel) -> QuantizedTensor:  # fmt: skip
    """A quantized [vocab, hidden] matrix's rows [first, first + rows): where the ranks do not
    divide the vocabulary, no padding rows can be made in the packed form."""
    if vocab_size % tp.size:
        raise ValueError(f"the tensor-parallel size does not divide the vocabulary ({vocab_size} tokens): a "
                         "quantized embedding cannot be split; use quantization none")
    return loaded.narrow(0, first, rows)


def load_vocab_rows(param: nn.Parameter, loaded: torch.Tensor, first: int, vocab_size: int) -> None:
    """Rows [first, first + rows) of a [vocab, hidden] checkpoint tensor; rows past the vocabulary
    (its padding to a multiple of the ranks) are zeros."""
    if loaded.shape[0] != vocab_size or loaded.shape[1:] != param.shape[1:]:
        raise ValueError(f"tensor has shape {tuple(loaded.shape)}, expected ({vocab_size}, {param.shape[1]})")
    count = max(0, min(param.shape[0], vocab_size - first))
    param.data.zero_()
    param.data[:count].copy_(loaded.narrow(0, first, count))
