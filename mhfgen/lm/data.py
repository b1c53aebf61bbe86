"""Byte-level training data that needs no download: the Python standard library's own sources.

Every machine with Python has them (about 30 MB of real text). Tokens are bytes (vocabulary
256). Files are split into train and validation by a hash of their path relative to the
standard library root, so the split is deterministic and does not depend on file order or on
how many files a machine has. Batches are random windows drawn with a seeded generator.
"""

from __future__ import annotations

import logging
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

VOCAB_SIZE = 256
# NOTE: files are joined with a NUL byte between them; NUL does not occur in Python source,
# so the model sees a clean document boundary without a special token beyond the 256 bytes.
SEPARATOR = b"\x00"
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library (sysconfig 'stdlib')."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path | None = None) -> list[Path]:
    """Every `.py` file under `root` (default: the standard library), sorted by relative path,
    leaving out installed third-party packages (site-packages, dist-packages) and caches."""
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no source directory at {root}")
    files = [
        p
        for p in root.rglob("*.py")
        if p.is_file() and not _EXCLUDED_DIRS.intersection(p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(relative_path: str, val_percent: float) -> bool:
    """Whether a file (by its '/'-separated path relative to the root) is a validation file:
    crc32 of the path, taken modulo 10000, below val_percent * 100."""
    return zlib.crc32(relative_path.encode()) % 10000 < val_percent * 100


@dataclass
class ByteCorpus:
    """Train and validation token streams (uint8 tensors) and where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    root: str
    train_files: int
    val_files: int

    def describe(self) -> str:
        return (
            f"{self.root}: {self.train_files} train files ({self.train.numel() / 1e6:.1f} MB), "
            f"{self.val_files} validation files ({self.val.numel() / 1e6:.1f} MB)"
        )


def load_corpus(
    root: Path | None = None, val_percent: float = 5.0, max_bytes: int | None = None
) -> ByteCorpus:
    """Read the `.py` files under `root` (default: the standard library) into a ByteCorpus.

    val_percent: share of files (by path hash) held out for validation. max_bytes: stop
    reading once this many bytes were read and both splits have a file (files in sorted
    order; for quick tests).
    """
    if not 0 < val_percent < 100:
        raise ValueError(f"val_percent must be in (0, 100), got {val_percent}")
    root = stdlib_root() if root is None else Path(root)
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    total = 0
    for path in source_files(root):
        data = path.read_bytes()
        parts[is_validation(path.relative_to(root).as_posix(), val_percent)].append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes and parts[False] and parts[True]:
            break
    if not parts[False] or not parts[True]:
        raise ValueError(
            f"{root} gave {len(parts[False])} train and {len(parts[True])} "
            f"validation files; need at least one of each"
        )
    streams = {
        split: torch.frombuffer(bytearray(SEPARATOR.join(files)), dtype=torch.uint8)
        for split, files in parts.items()
    }
    corpus = ByteCorpus(
        streams[False], streams[True], str(root), len(parts[False]), len(parts[True])
    )
    log.info("corpus %s", corpus.describe())
    return corpus


class BatchSampler:
    """Random windows of `seq_len + 1` tokens from one stream, drawn with a seeded generator.

    `next()` returns (inputs, targets), each (batch_size, seq_len) int64 on `device`, targets
    shifted by one token. The same seed gives the same batches on every machine.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        batch_size: int,
        seq_len: int,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if tokens.dim() != 1 or tokens.numel() <= seq_len + 1:
            raise ValueError(
                f"need a 1-d token stream longer than seq_len + 1 = {seq_len + 1}, "
                f"got shape {tuple(tokens.shape)}"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(seq_len + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = self.tokens.numel() - self.seq_len - 1
        starts = torch.randint(0, high + 1, (self.batch_size, 1), generator=self.generator)
        windows = self.tokens[starts + self._offsets].long()
        if self.device.type == "cuda":
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        else:
            windows = windows.to(self.device)
        return windows[:, :-1], windows[:, 1:]

    def batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`count` batches (a fixed validation set when the sampler is fresh)."""
        return [self.next() for _ in range(count)]
