"""Embedding models."""


def build(config, services):
    raise NotImplementedError("embedder is being built")
