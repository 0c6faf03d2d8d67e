"""The report: a typed document (``document``, with its JSON Schema ``schema.json``) and what
a person reads of it: ``markdown``, ``html`` (self-contained, untrusted text escaped),
``console`` (the CLI's terminal view), ``plots/``; ``render`` writes and re-renders the files.
Renderers read the document only, never a model."""
