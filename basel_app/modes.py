"""`eval_mode(model)`: run a block in eval mode (no dropout) and give the model back in the mode it had,
so a scorer or an evaluation in the middle of training does not silently switch training off."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
