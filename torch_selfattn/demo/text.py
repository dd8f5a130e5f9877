"""The demo's training text and its character vocabulary."""
import os
import sysconfig

import torch

TEXT_NAME = "kjv_genesis_exodus.txt"
# The 384 KB text is kept out of the import package: data/ in the source
# tree (an in-place or editable build), <prefix>/share/torch-selfattn/ in an
# installation (setup.py's data_files).
_TEXT_DIRS = [
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data"),
    *(os.path.join(sysconfig.get_path("data", scheme), "share", "torch-selfattn")
      for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user"))),
]


def text_path():
    """Where the demo's text is; FileNotFoundError naming the places looked in."""
    for directory in _TEXT_DIRS:
        path = os.path.join(directory, TEXT_NAME)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"the demo's text {TEXT_NAME} is in none of {', '.join(_TEXT_DIRS)}")


class CharText:
    """A text as a tensor of character ids, split into training and
    validation parts (the last tenth), with random windows of each."""

    def __init__(self, text):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}
        ids = self.encode(text)
        split = int(0.9 * len(ids))
        self.train, self.val = ids[:split], ids[split:]

    @classmethod
    def load(cls, path=None):
        with open(path or text_path(), encoding="utf-8") as f:
            return cls(f.read())

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids.tolist())

    def batch(self, batch_size, block_size, generator, split="train"):
        """Inputs and next-character targets, (batch_size, block_size) each."""
        ids = self.train if split == "train" else self.val
        starts = torch.randint(len(ids) - block_size - 1, (batch_size,), generator=generator)
        windows = torch.stack([ids[s:s + block_size + 1] for s in starts.tolist()])
        return windows[:, :-1], windows[:, 1:]
