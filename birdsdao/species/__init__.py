"""Species names, cards and name resolution."""


def build(config, services):
    raise NotImplementedError("species catalogue is being built")
