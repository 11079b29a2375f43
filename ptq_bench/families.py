"""Stand-in for the model-family registry (replaced at merge by the registry's own module).

Only the two names `ptq_bench.sources` uses: the supported `config.model_type`s and the check that a
model type is one of them.
"""

from __future__ import annotations

from ptq_bench.errors import RecipeError

SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "opt", "gpt_neox", "gpt2",
    "bitnet",
)


def check_model_type(model_type: str) -> None:
    """Raise RecipeError (one line, naming the family and listing the supported ones) if unregistered."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise RecipeError(f"unsupported model family '{model_type}' (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
