"""Everything that knows PyTorch (the model, checkpoints, training) lives here.

Import submodules explicitly; this file stays empty so that importing the
registry (`core.variants`) never imports torch.
"""
