"""The CNN-RNN classifier, its backbones, and loading any --checkpoint (run, save_pretrained, Hub, seed notebooks)."""
