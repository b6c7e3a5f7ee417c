"""The CNN-RNN classifier, its backbones, and loading any --checkpoint (run, save_pretrained, Hub, seed notebooks)."""

from .classifier import CNNRNNClassifier  # noqa: F401 - `from wikiart.model import CNNRNNClassifier`, as model cards say
