"""llmrec: LLM-powered recommendation (RecGPT / 360Brew style) on a CPU-sized stack.

`Recommender` is imported lazily so that `import llmrec.data` stays light (no torch, no FAISS).
"""

__version__ = "0.1.0"
__all__ = ["Recommender", "__version__"]


def __getattr__(name: str):
    if name == "Recommender":
        from llmrec.pipeline import Recommender

        return Recommender
    raise AttributeError(f"module 'llmrec' has no attribute {name!r}")
