"""tiny_model.py -- models and tokenizers built in code, for tests, benches and the toy world (no download).

  byte_tokenizer  a byte-level tokenizer (ids 0..255 are the bytes) with a ChatML chat template
  tiny_qwen3      a randomly initialised Qwen3ForCausalLM from a config

Run: imported by tests, bench.py, toy.py and plan.py. Tests: tests/test_rollout.py.
"""
from __future__ import annotations

import torch

# A ChatML template (the format Qwen and SmolLM2 use): <|im_start|>role\ncontent<|im_end|>\n per message.
CHATML_TEMPLATE = ("{% for message in messages %}"
                   "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
                   "{% endfor %}"
                   "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

BYTE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")


def _byte_to_char() -> dict[int, str]:
    """The reversible byte -> printable character map that byte-level BPE uses: printable Latin-1 bytes
    stand for themselves, the other 68 bytes are shifted to code points 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def byte_tokenizer(vocab_size: int = 512):
    """A byte-level tokenizer built entirely in code (no download), with a ChatML chat template.

    ids 0..255 are the bytes (every string round-trips), then <|endoftext|> 256, <|im_start|> 257,
    <|im_end|> 258 (EOS: ends an assistant turn), <|pad|> 259, then reserved special tokens up to
    `vocab_size` (default 512 = tiny_qwen3's vocabulary), so every id a random tiny model samples decodes
    (to nothing, as special tokens are skipped in text).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    n_special = vocab_size - 256
    if n_special < len(BYTE_SPECIAL_TOKENS):
        raise ValueError(f"byte_tokenizer needs vocab_size >= {256 + len(BYTE_SPECIAL_TOKENS)}")
    vocab = {ch: b for b, ch in _byte_to_char().items()}                 # 256 single-byte tokens, no merges
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    reserved = [f"<|reserved_{i}|>" for i in range(n_special - len(BYTE_SPECIAL_TOKENS))]
    tok.add_special_tokens([*BYTE_SPECIAL_TOKENS, *reserved])          # ids 256, 257, ... in this order
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                 chat_template=CHATML_TEMPLATE)
    assert len(hf) == vocab_size and hf.convert_tokens_to_ids("<|endoftext|>") == 256
    return hf


def tiny_qwen3(vocab_size: int = 512, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
               num_kv_heads: int = 1, head_dim: int = 32, intermediate_size: int = 128,
               tie_word_embeddings: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised Qwen3ForCausalLM built from a config (no download), in `dtype` (fp32).
    The defaults fit byte_tokenizer() (512 ids) and vLLM's CPU kernels (head_dim >= 32). Attention is
    eager, except in float64: eager attention takes its softmax in float32 whatever the model's dtype
    (a 1e-7 floor), so a float64 model uses SDPA, which stays in float64 end to end."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
                      intermediate_size=intermediate_size, max_position_embeddings=4096,
                      tie_word_embeddings=tie_word_embeddings,
                      attn_implementation="sdpa" if dtype == torch.float64 else "eager")
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(cfg).float().to(dtype)
