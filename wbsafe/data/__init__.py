"""Prompts: the built-in suites and readers for public sets (``prompts``), and the tiny
world's templated language that the tiny organisms are trained on (``tinyworld``)."""
