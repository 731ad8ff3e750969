"""backprop-lab: hand-derived backward passes for small networks, checked against autograd."""

__version__ = "0.1.0"
