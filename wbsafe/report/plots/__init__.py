"""PNG figures for the report, one module per analysis (matplotlib, Agg backend)."""
