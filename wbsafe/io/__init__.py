"""Reading and writing files, with every input validated first.

- ``checkpoints``: safetensors headers (validated before anything else reads a file), shard
  indexes, zero-copy maps and streamed tensors; pickles are refused.
- ``models``: configs, adapters and their fit to a base, loading a model and its tokenizer
  (no remote code), the chat template, inspection without loading weights.
- ``serialize``: JSON with atomic writes, hashes, the run manifest.
- ``typed``: pydantic adapters that validate typed JSON documents against their dataclasses.
- ``token_strings``: a vocabulary's token strings without building a tokenizer.
"""
