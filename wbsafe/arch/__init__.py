"""What wbsafe knows about how each model family lays out its weights and modules.

Today the Llama-style names (with the GPT-2 and GPT-NeoX spellings of the same modules),
filled family by family. :mod:`wbsafe.arch.names` maps a tensor name to its layer index and
module kind. This package imports nothing from wbsafe except :mod:`wbsafe.errors`.
"""
