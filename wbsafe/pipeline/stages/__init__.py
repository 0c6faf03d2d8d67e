"""One stage adapter per analysis: call it, turn its result into report sections (tables,
plots, text) and gate evidence. Every number in a report's stage section and every piece of
evidence the gate words into a reason starts in one of these modules."""
