"""Local training corpus: the Python standard library sources on this machine.

`corpus_files("stdlib")` lists every `*.py` under `sysconfig.get_paths()["stdlib"]`,
excluding `site-packages` (third-party code, varies per machine), sorted for determinism.
A path instead of "stdlib" reads a text file or every `*.py`, `*.txt`, `*.md`, `*.rst`
under a directory. Files go to the validation split by a hash of their relative path, so
the split is stable across machines and corpus growth.

Batches are random windows of seq_len + 1 tokens from one long token stream in which
documents are separated by the EOS token.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

TEXT_SUFFIXES = (".py", ".txt", ".md", ".rst")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(corpus: str | Path) -> list[Path]:
    if str(corpus) == "stdlib":
        root = stdlib_root()
        files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts]
    else:
        root = Path(corpus)
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise FileNotFoundError(f"corpus {corpus} is neither 'stdlib', a file nor a directory")
        files = [p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()]
    if not files:
        raise ValueError(f"corpus {corpus} has no text files")
    return sorted(files)


def read_texts(files: list[Path], max_bytes: int | None = None) -> Iterator[str]:
    """Yield file contents (undecodable bytes replaced), stopping after max_bytes."""
    total = 0
    for f in files:
        text = f.read_bytes().decode("utf-8", errors="replace")
        yield text
        total += len(text)
        if max_bytes is not None and total >= max_bytes:
            return


def split_files(files: list[Path], val_fraction: float = 0.02) -> tuple[list[Path], list[Path]]:
    """(train, val) by a stable hash of each file name and its parent folder."""
    def is_val(p: Path) -> bool:
        h = hashlib.sha256(f"{p.parent.name}/{p.name}".encode()).digest()
        return int.from_bytes(h[:4], "little") / 2**32 < val_fraction
    val = [f for f in files if is_val(f)]
    return [f for f in files if not is_val(f)], val


def tokenize_texts(tokenizer, texts, eos_id: int | None) -> np.ndarray:
    """One uint32 stream: each document's tokens followed by eos_id (when given)."""
    texts, parts = list(texts), []
    tail = [eos_id] if eos_id is not None else []
    for i in range(0, len(texts), 64):  # batches let `tokenizers` use every core
        for ids in tokenizer.encode_batch(texts[i:i + 64]):
            parts.append(np.asarray(ids + tail, dtype=np.uint32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)


class TokenBatches:
    """Endless random windows from a token stream: (x, y), each [B, seq_len] int64, where
    y is x shifted left by one token."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, device=None):
        if len(tokens) <= seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill a window of {seq_len + 1}")
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        hi = len(self.tokens) - self.seq_len - 1
        starts = torch.randint(0, hi + 1, (self.batch_size,), generator=self.gen)
        win = torch.stack([self.tokens[s:s + self.seq_len + 1] for s in starts.tolist()])
        win = win.to(self.device) if self.device is not None else win
        return win[:, :-1], win[:, 1:]
