"""reproresnet: pre-activation and wide ResNets on CIFAR-10, reproduced."""

__version__ = "0.1.0"
