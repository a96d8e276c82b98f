"""Training data: tokenizers, synthetic needle tasks, text/chat/prompt_completion sources, mixtures, packing, batches.

Documents flow one way: a source (``synthetic``, or ``sources`` reading ``records`` and turning each into a document
by its ``formats``) yields :class:`~toolkit.data.packing.Document` objects, ``mixture`` interleaves several sources
by token share, ``packing`` lays documents into rows of the stage length, ``batches`` stacks rows into tensors and
counts each source's tokens.
"""
