"""Tokens a dream may hold, and text round trips (DESIGN §4: prompts are token sequences that
survive decode -> encode, so a dream is the text a user can paste back).

    allowed_tokens(lm)        # (V,) bool: tokens EPO may propose
    drawable_tokens(lm)       # (V,) bool: the ones random starting prompts are drawn from
    retokenizes(tok, ids)     # (B,) bool: decode then encode gives back these ids

Rows of ids may be padded with -1 (fluentdream.core.ragged); each row's own tokens are used.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import UserError
from .ragged import rows as token_rows


# Texts whose tokens serve as left neighbours when a token is judged in context.
_ANCHOR_TEXTS = (".", "1", "a", " the", "\n", "(")


@functools.lru_cache(maxsize=8)
def _token_masks(tokenizer, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) bool masks (surviving decode -> encode alone, allowed in context); see below."""
    n = min(len(tokenizer), vocab_size)
    ids = list(range(n))
    texts = decode(tokenizer, torch.tensor(ids)[:, None])
    alone = [e == [i] for i, e in enumerate(encode(tokenizer, texts))]
    # In context: SentencePiece adds a "▁" before a text's first word, so a word-continuation
    # piece ("ing") never survives alone but does after a neighbour ("a" + "ing" -> ▁a, ing).
    # A token is allowed when it survives after at least one neighbour token. Only tokens that
    # fail alone are tried in context (few, for byte-level BPE vocabularies).
    survives = list(alone)
    for a in _anchor_tokens(tokenizer):
        todo = [i for i in ids if not survives[i]]
        if not todo:
            break
        prefix = encode(tokenizer, decode(tokenizer, torch.tensor([[a]])))[0]
        pairs = decode(tokenizer, torch.tensor([[a, i] for i in todo]))
        for i, e in zip(todo, encode(tokenizer, pairs)):
            survives[i] = e == prefix + [i]
    whole = ["\ufffd" not in t for t in texts]          # not a partial UTF-8 character
    masks = []
    for keep in (alone, survives):
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[:n] = torch.tensor([k and w for k, w in zip(keep, whole)])
        mask[list(tokenizer.all_special_ids)] = False
        masks.append(mask)
    return masks[0], masks[1]


def _anchor_tokens(tokenizer) -> list[int]:
    """Single tokens (one per anchor text that encodes to one token) used as left neighbours."""
    found = [e[0] for e in encode(tokenizer, list(_ANCHOR_TEXTS)) if len(e) == 1]
    return list(dict.fromkeys(found))


def allowed_tokens(lm) -> torch.Tensor:
    """(V,) bool: tokens that may be proposed: not special, not a partial UTF-8 character, and
    surviving decode -> encode alone or after a neighbour token (DESIGN §4)."""
    return _token_masks(lm.tokenizer, lm.vocab_size)[1]


def drawable_tokens(lm) -> torch.Tensor:
    """(V,) bool: the allowed tokens that also survive decode -> encode alone, from which random
    prompts are drawn. The same set as allowed_tokens for byte-level BPE; for SentencePiece, the
    word-start pieces, so that random prompts (words side by side) survive retokenization."""
    return _token_masks(lm.tokenizer, lm.vocab_size)[0]


def decode(tokenizer, ids: torch.Tensor) -> list[str]:
    """(B, n) -> B texts (rows padded with -1 end where their tokens end), special tokens kept,
    no clean-up of spaces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)   # the Rust tokenizer: no wrapper cost
    if backend is not None:
        return backend.decode_batch(token_rows(ids), skip_special_tokens=False)
    return tokenizer.batch_decode(token_rows(ids), clean_up_tokenization_spaces=False)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """B texts -> their token ids, no special tokens added."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def retokenizes(tokenizer, ids: torch.Tensor, texts: list[str] | None = None) -> np.ndarray:
    """(B, n) -> (B,) bool: decoding (or the given `texts`, decoded already) then encoding gives
    back exactly these tokens."""
    back = encode(tokenizer, texts if texts is not None else decode(tokenizer, ids))
    return np.array([b == row for b, row in zip(back, token_rows(ids))], dtype=bool)




def check_same_vocab(lm, fluency) -> None:
    if lm.vocab_size != fluency.vocab_size or lm.tokenizer.get_vocab() != fluency.tokenizer.get_vocab():
        raise UserError(f"the fluency model {fluency.name!r} and the target model {lm.name!r} "
                        "have different vocabularies; both must share one tokenizer")
