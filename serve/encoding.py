"""Text -> token ids with `tokenizers`: batch encoding, truncation to the bundle's max_length, padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ServeError

Text = str | tuple[str, str]


class InputTooLong(ValueError):
    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(
            f"inputs[{index}] has {tokens} tokens, more than the limit of {limit} "
            f'(send "truncate": true, or start the server with --auto-truncate)'
        )
        self.index = index


class TokenizerFailed(ValueError):
    """The tokenizer rejected an input (e.g. a string with lone surrogates)."""


class TextEncoder:
    """A `tokenizers.Tokenizer` that truncates to `max_length` (from the left for prompts) and pads here."""

    def __init__(
        self,
        tokenizer_file,
        max_length: int,
        pad_token: str | None = None,
        *,
        pad_id: int | None = None,
        truncate_left: bool = False,
    ):
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:
            raise ServeError(f"{tokenizer_file}: cannot load tokenizer ({e})") from None
        self.max_length = max_length
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(
            max_length=max_length, direction="left" if truncate_left else "right"
        )
        if pad_id is None:
            pad_id = self.tokenizer.token_to_id(pad_token) if pad_token else None
        self.pad_id = pad_id if pad_id is not None else 0
        self._untruncated = None

    def encode(self, texts: Sequence[Text], *, truncate: bool = True, special_tokens: bool = True) -> list:
        """Encodings of `texts`; with truncate=False an input over max_length raises InputTooLong."""
        try:
            encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=special_tokens)
        except Exception as e:  # pyo3 conversion errors and tokenizer exceptions alike
            raise TokenizerFailed(f"the tokenizer rejected the input ({str(e).splitlines()[0]})") from None
        if not truncate:
            for i, e in enumerate(encodings):
                if e.overflowing:
                    raise InputTooLong(i, self.count_tokens(texts[i], special_tokens), self.max_length)
        return encodings

    def count_tokens(self, text: Text, special_tokens: bool = True) -> int:
        return len(self.encode_untruncated([text], special_tokens=special_tokens)[0].ids)

    def encode_untruncated(self, texts: Sequence[Text], *, special_tokens: bool = True) -> list:
        if self._untruncated is None:
            from tokenizers import Tokenizer

            self._untruncated = Tokenizer.from_str(self.tokenizer.to_str())
            self._untruncated.no_truncation()
        try:
            return self._untruncated.encode_batch(list(texts), add_special_tokens=special_tokens)
        except Exception as e:
            raise TokenizerFailed(f"the tokenizer rejected the input ({str(e).splitlines()[0]})") from None

    def pad(self, encodings: Sequence[Any], *, left: bool = False) -> dict[str, np.ndarray]:
        """input_ids / attention_mask / token_type_ids as int64 arrays padded to the longest encoding."""
        n, width = len(encodings), max(len(e.ids) for e in encodings)
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for row, e in enumerate(encodings):
            k = len(e.ids)
            cols = slice(width - k, width) if left else slice(0, k)
            ids[row, cols] = e.ids
            mask[row, cols] = 1
            types[row, cols] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
