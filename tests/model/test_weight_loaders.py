"""Per-parameter weight loaders: a merged layer's shards land in exactly their rows, and the llama
loader finds each checkpoint piece's shard through packed_modules_mapping."""

import pytest
import torch

from tokenmill.model.arch_config import ArchConfig
from tokenmill.model.layers import MergedLinear, default_weight_loader
from tokenmill.model.llama import LlamaForCausalLM
from tokenmill.quant.tensor import concat_rows, quantize_int8

TINY = ArchConfig(
    architecture="llama", vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=4, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64,
    tie_word_embeddings=False, attention_bias=True,
)


def test_merged_layer_loads_each_shard_into_its_rows():
    layer = MergedLinear(8, [6, 2, 2], ["q", "k", "v"], bias=True)
    weights = {s: torch.randn(n, 8) for s, n in zip("qkv", [6, 2, 2])}
    biases = {s: torch.randn(n) for s, n in zip("qkv", [6, 2, 2])}
    for shard in "vqk":  # in any order
        layer.weight.weight_loader(layer.weight, weights[shard], shard)
        layer.bias.weight_loader(layer.bias, biases[shard], shard)
    assert torch.equal(layer.weight, torch.cat([weights[s] for s in "qkv"]))
    assert torch.equal(layer.bias, torch.cat([biases[s] for s in "qkv"]))


def test_merged_layer_refuses_a_wrong_shaped_shard():
    layer = MergedLinear(8, [4, 4], ["gate", "up"])
    with pytest.raises(ValueError, match=r"shard 'up' has shape \(5, 8\), expected \(4, 8\)"):
        layer.weight.weight_loader(layer.weight, torch.randn(5, 8), "up")
    with pytest.raises(KeyError, match="'down' is not a shard"):
        layer.weight.weight_loader(layer.weight, torch.randn(4, 8), "down")


def test_default_loader_copies_whole_and_checks_the_shape():
    param = torch.nn.Parameter(torch.zeros(3, 2))
    loaded = torch.randn(3, 2)
    default_weight_loader(param, loaded)
    assert torch.equal(param, loaded)
    with pytest.raises(ValueError, match=r"has shape \(2, 3\), expected \(3, 2\)"):
        default_weight_loader(param, torch.randn(2, 3))


def hf_checkpoint(cfg: ArchConfig) -> dict[str, torch.Tensor]:
    """Random weights under Hugging Face's names, q/k/v and gate/up as separate matrices."""
    q, kv, h, i = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size, cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,),
              "lm_head.weight": (cfg.vocab_size, h)}
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}"
        shapes |= {
            f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (q, h), f"{p}.self_attn.q_proj.bias": (q,),
            f"{p}.self_attn.k_proj.weight": (kv, h), f"{p}.self_attn.k_proj.bias": (kv,),
            f"{p}.self_attn.v_proj.weight": (kv, h), f"{p}.self_attn.v_proj.bias": (kv,),
            f"{p}.self_attn.o_proj.weight": (h, q),
            f"{p}.mlp.gate_proj.weight": (i, h), f"{p}.mlp.up_proj.weight": (i, h), f"{p}.mlp.down_proj.weight": (h, i),
        }
    return {name: torch.randn(shape) for name, shape in shapes.items()}


def test_llama_loads_packed_pieces_into_their_shards():
    weights = hf_checkpoint(TINY)
    model = LlamaForCausalLM(TINY)
    assert model.load_weights(reversed(weights.items())) == {}
    layer = model.model.layers[1]
    for kind in ("weight", "bias"):
        pieces = [weights[f"model.layers.1.self_attn.{s}_proj.{kind}"] for s in "qkv"]
        assert torch.equal(getattr(layer.self_attn.qkv_proj, kind), torch.cat(pieces))
    gate_up = torch.cat([weights[f"model.layers.1.mlp.{s}_proj.weight"] for s in ("gate", "up")])
    assert torch.equal(layer.mlp.gate_up_proj.weight, gate_up)
    assert torch.equal(layer.mlp.down_proj.weight, weights["model.layers.1.mlp.down_proj.weight"])


def test_llama_reports_a_missing_shard_by_its_checkpoint_name():
    weights = hf_checkpoint(TINY)
    del weights["model.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(ValueError, match=r"missing weights: model\.layers\.1\.self_attn\.k_proj\.weight$"):
        LlamaForCausalLM(TINY).load_weights(weights.items())


def test_llama_names_a_wrong_shaped_checkpoint_weight():
    weights = hf_checkpoint(TINY)
    weights["model.layers.0.mlp.up_proj.weight"] = torch.randn(25, 16)
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight'.*\(25, 16\), expected \(24, 16\)"):
        LlamaForCausalLM(TINY).load_weights(weights.items())


def test_llama_refuses_a_weight_with_no_place():
    weights = hf_checkpoint(TINY) | {"model.layers.0.mlp.extra_proj.weight": torch.randn(2, 2)}
    with pytest.raises(KeyError, match="has no place"):
        LlamaForCausalLM(TINY).load_weights(weights.items())


def test_llama_stacks_quantized_pieces_in_the_layers_shard_order():
    weights = hf_checkpoint(TINY)
    quantized = {name: quantize_int8(w) for name, w in weights.items() if name.endswith("_proj.weight")}
    out = LlamaForCausalLM(TINY).load_weights(reversed((weights | quantized).items()))
    qkv = out["model.layers.0.self_attn.qkv_proj"]
    expected = concat_rows([quantized[f"model.layers.0.self_attn.{s}_proj.weight"] for s in "qkv"])
    assert torch.equal(qkv.q, expected.q) and torch.equal(qkv.scale, expected.scale)
    assert out["model.layers.1.mlp.gate_up_proj"].shape == (2 * TINY.intermediate_size, TINY.hidden_size)
    assert "model.layers.1.mlp.down_proj" in out


def test_llama_refuses_to_stack_quantized_with_float_pieces():
    weights = hf_checkpoint(TINY)
    weights["model.layers.0.self_attn.q_proj.weight"] = quantize_int8(weights["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(ValueError, match="qkv_proj has both quantized and float shards"):
        LlamaForCausalLM(TINY).load_weights(weights.items())
