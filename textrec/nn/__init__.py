"""Recurrent layers with refined gates (Cheng et al., 2020, arXiv 2002.11338).

``GatedRNN`` covers LSTM, GRU and MGU, each with ``refine = "none" | "add" | "mul"``,
with the interface of ``torch.nn.LSTM``. ``recording_gates`` / ``gate_stats`` collect and
summarise gate activations for saturation studies.
"""

from .gates import MODES, REFINES, SIGMOID_GATES
from .graphs import GraphedTraining, for_training
from .rnn import GatedRNN, tensor_core_matmuls
from .stats import gate_stats, recording_gates

__all__ = ["GatedRNN", "GraphedTraining", "MODES", "REFINES", "SIGMOID_GATES", "gate_stats", "recording_gates", "for_training", "tensor_core_matmuls"]
