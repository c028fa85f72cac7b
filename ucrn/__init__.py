"""UCRN: Unimodal and Crossmodal Refinement Network (Guo et al., EMNLP 2021)."""

from ucrn.errors import UcrnError

__version__ = "0.1.0"
MODALITIES = ("l", "a", "v")
MODALITY_NAMES = {"l": "language", "a": "audio", "v": "vision"}

__all__ = ["MODALITIES", "MODALITY_NAMES", "UcrnError", "__version__"]
