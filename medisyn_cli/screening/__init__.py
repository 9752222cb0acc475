"""Near-copy screening: embedders, the FAISS training index, the screener used inside `generate`, and
`medisyn screen` (audit of existing outputs) with its HTML report."""
