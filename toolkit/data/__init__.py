"""Training data: tokenizers, synthetic needle tasks, text sources, packing into fixed-length rows, batches.

Documents flow one way: a source (``synthetic`` or ``sources``) yields :class:`~toolkit.data.packing.Document`
objects, ``packing`` lays them into rows of the stage length, ``batches`` stacks rows into tensors.
"""
