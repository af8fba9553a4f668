"""si-toolkit: rank principle sets by the Sufficiency Index of a model's chain of thought."""

__version__ = "0.1.0"
