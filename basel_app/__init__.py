"""basel_app: task-aware low-rank compression of Llama models (Basel, BSI and the SVD baselines).

Importing it registers the compressed architecture with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(<compressed_model dir>)` works without trust_remote_code.
"""

# First, before torch is imported: `python -m basel_app[.evaluate|.bench]` restarts itself under tcmalloc where it
# is installed (basel_app.allocator); an import from other code changes nothing.
from basel_app.allocator import reexec_command_line_under_tcmalloc

reexec_command_line_under_tcmalloc()

import logging  # noqa: E402

# transformers imports torchao (the quantize= dependency) when it is installed; torchao then warns that its
# CUDA-only kernels do not load, and torch that torchao registers enums with pytree: lines on every run that
# say nothing about it. Only these two loggers are quietened, to errors.
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

from basel_app.models import load_compressed, save_compressed  # noqa: E402

__all__ = ["load_compressed", "save_compressed"]
