"""deltaenergy: the reference study of ΔEnergy and EBM for CLIP OOD detection and generalization."""

__version__ = "0.1.0"
