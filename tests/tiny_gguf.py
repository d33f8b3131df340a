"""A tiny llama-architecture GGUF model, written offline with llama.cpp's own ``gguf`` writer.

Its weights are set, not trained, so that what it says is known: a byte-level BPE vocabulary
(GPT-2's byte alphabet, a few whole words and the merges that build them) and one
transformer block whose attention and feed-forward outputs are zero, so each next token
depends only on the current one. After any prompt it says " the", then walks the cycle of
``WORDS`` (" the quick brown fox jumps over lazy dog the ..."): one token per word, and one
token per word in OpenAI's cl100k encoding too, so the server's own token count and
tokenomy's count of the same text agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog")
EMBED = 32  # one dimension always on, one per word
HEADS = 4
FFN = 64
#: How strongly a word calls for its successor, against the pull towards " the".
SUCCESSOR, THE = 8.0, 1.0


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """(tokens, token types, merges, id of each word's token)."""
    tokens = _byte_alphabet()
    types = [1] * 256  # normal
    tokens += ["<s>", "</s>"]
    types += [3, 3]  # control
    merges: list[str] = []
    words: dict[str, int] = {}
    index = {t: i for i, t in enumerate(tokens)}
    for w in WORDS:
        piece = "Ġ" + w  # "Ġ" stands for the space byte
        for end in range(2, len(piece) + 1):
            if piece[:end] not in index:
                merges.append(f"{piece[: end - 1]} {piece[end - 1]}")
                index[piece[:end]] = len(tokens)
                tokens.append(piece[:end])
                types.append(1)
        words[w] = index[piece]
    return tokens, types, merges, words


def write_model(path: Path) -> Path:
    """Write the model to ``path`` and return it."""
    import gguf

    tokens, types, merges, words = vocabulary()
    n = len(tokens)
    rng = np.random.default_rng(7)
    embd = np.zeros((n, EMBED), np.float32)
    embd[:, 0] = 1.0
    out = np.zeros((n, EMBED), np.float32)
    for k, w in enumerate(WORDS):
        embd[words[w], 1 + k] = 1.0
        # The logit of word k comes from the dimension of the word before it in the cycle.
        out[words[w], 1 + (k - 1) % len(WORDS)] = SUCCESSOR
    out[words[WORDS[0]], 0] = THE  # after anything else: " the"

    def small(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    ones = np.ones(EMBED, np.float32)
    tensors = {
        "token_embd.weight": embd,
        "output_norm.weight": ones,
        "output.weight": out,
        "blk.0.attn_norm.weight": ones,
        "blk.0.attn_q.weight": small(EMBED, EMBED),
        "blk.0.attn_k.weight": small(EMBED, EMBED),
        "blk.0.attn_v.weight": small(EMBED, EMBED),
        # Zero outputs: the block adds nothing to the residual stream.
        "blk.0.attn_output.weight": np.zeros((EMBED, EMBED), np.float32),
        "blk.0.ffn_norm.weight": ones,
        "blk.0.ffn_gate.weight": small(FFN, EMBED),
        "blk.0.ffn_up.weight": small(FFN, EMBED),
        "blk.0.ffn_down.weight": np.zeros((EMBED, FFN), np.float32),
    }
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tokenomy-tiny")
    w.add_context_length(2048)
    w.add_embedding_length(EMBED)
    w.add_block_count(1)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(EMBED // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # all f32
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(256)
    w.add_eos_token_id(257)
    w.add_add_bos_token(True)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
