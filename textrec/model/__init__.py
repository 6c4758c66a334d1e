"""The CRNN recogniser: backbone -> recurrent sequence layers -> linear CTC head."""

from .crnn import CRNN, CRNNConfig

__all__ = ["CRNN", "CRNNConfig"]
