"""Byte-level BPE tokenizer: trained here with `tokenizers`, or a DeepSeek `tokenizer.json`.

Byte-level means every string encodes (unknown characters fall back to their UTF-8 bytes)
and decode(encode(s)) == s. The special tokens are the DeepSeek-V3.2 chat tokens
(dsa.md §1.5), so a tokenizer trained here speaks the same chat format.

Train one on the local Python standard library sources:

    python -m envfactory.model.tokenizer train --corpus stdlib --vocab-size 8192 --out out/tokenizer.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
SPECIAL_TOKENS = (BOS, EOS, "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜")


class Tokenizer:
    """Text <-> token ids. Wraps a `tokenizers.Tokenizer`."""

    def __init__(self, tok: HFTokenizer):
        self.tok = tok
        self.bos_id = tok.token_to_id(BOS)
        self.eos_id = tok.token_to_id(EOS)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a `tokenizer.json`: ours, or DeepSeek's from a V3.2 checkpoint directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
              special_tokens: tuple[str, ...] = SPECIAL_TOKENS) -> Tokenizer:
    """Train a byte-level BPE on an iterable of documents."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, always
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)


def main(argv: list[str] | None = None) -> int:
    from .data import corpus_files, read_texts  # local import: keeps the module light

    ap = argparse.ArgumentParser(prog="python -m envfactory.model.tokenizer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train a byte-level BPE on a local corpus")
    tr.add_argument("--corpus", default="stdlib", help="'stdlib' or a file/directory of text")
    tr.add_argument("--vocab-size", type=int, default=8192)
    tr.add_argument("--max-bytes", type=int, default=None, help="stop reading after this many bytes")
    tr.add_argument("--out", required=True, help="where to write tokenizer.json")
    args = ap.parse_args(argv)
    try:
        files = corpus_files(args.corpus)
        tok = train_bpe(read_texts(files, args.max_bytes), args.vocab_size)
        tok.save(args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"trained {tok.vocab_size} tokens on {len(files)} files -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
