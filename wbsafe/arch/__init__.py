"""What wbsafe knows about how each model family lays out its weights, modules and chat.

:mod:`wbsafe.arch.families` is the family table (one entry per family, detected from
``config.json``): decoder layers, residual readers and writers, storage layout, embedding
scale, norm placement, multimodal wrappers, chat quirks, end-of-turn tokens, LoRA targets.
:mod:`wbsafe.arch.names` maps a tensor name to its layer index and module kind. This
package imports nothing from wbsafe except :mod:`wbsafe.errors`.
"""
