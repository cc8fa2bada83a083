"""Answer backends."""


def build(config, services):
    raise NotImplementedError("answer backends are being built")
