"""Sparse updates: a fixed random support plus low rank (SLTrain), masks of the largest changes (LT-SFT)."""
