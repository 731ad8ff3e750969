"""backprop-lab: a hand-derived backward pass for a small sigmoid network, checked against autograd."""

__version__ = "0.1.0"
