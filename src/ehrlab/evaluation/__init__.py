"""Evaluation of final records (long tables, predictions, images), never of model internals."""
