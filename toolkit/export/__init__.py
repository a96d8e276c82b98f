"""Export a trained model for other runtimes: GGUF for llama.cpp and Ollama (:mod:`toolkit.export.to_gguf`), and
evaluation in llama.cpp on the exported file (:mod:`toolkit.export.llama_cpp_backend`, ``export --check``)."""

OUTTYPES = ("f16", "bf16", "q8_0", "f32")
"""The GGUF tensor types ``export --outtype`` writes (here, so the command line names them without the exporter)."""
