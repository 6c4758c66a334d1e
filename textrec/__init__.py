"""textrec: scene text recognition with CRNN and refined-gate recurrent layers.

The package root stays light (no torch import) so that `textrec --help` and the
text utilities start fast; import the submodules you need.
"""

__version__ = "0.1.0"
