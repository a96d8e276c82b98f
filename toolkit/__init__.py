"""Long-context fine-tuning and evaluation of Llama 3: recipes, RoPE extension, needle and RULER evals."""

__version__ = "0.1.0"
