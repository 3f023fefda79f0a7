"""Evaluation: metrics as pure functions of arrays, their plots, and step 5's results as tables."""
