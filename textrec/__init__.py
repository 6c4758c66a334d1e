"""textrec: scene text recognition with CRNN and refined-gate recurrent layers.

    from textrec import Recognizer
    rec = Recognizer.load()            # the shipped model
    print(rec.read("word.png").text)

The package root stays light: `Recognizer` and `Reading` are imported (with torch) on first use, so that
`textrec --help` and the text utilities start fast.
"""

__version__ = "0.1.0"
__all__ = ["Reading", "Recognizer", "__version__"]


def __getattr__(name: str):
    if name in ("Recognizer", "Reading"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'textrec' has no attribute {name!r}")
