"""wbsafe: white-box safety screening of fine-tuned language models.

Importing the package is cheap: heavy libraries (torch, transformers) are imported
inside the functions that need them, so ``wbsafe --help`` starts fast.
"""

__version__ = "0.1.0"
