"""basel_app: task-aware low-rank compression of Llama models (Basel, BSI and the SVD baselines).

Importing it registers the compressed architecture with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(<compressed_model dir>)` works without trust_remote_code.
"""

from basel_app.models import load_compressed, save_compressed

__all__ = ["load_compressed", "save_compressed"]
