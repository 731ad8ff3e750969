"""Hydra configuration of backprop-lab, installed as the package ``backprop_lab.conf``."""
