"""The chest X-ray forecasting data of seed 004: the contract between its readers, its task
and its evaluation (`contract`), event text, embeddings and the image cache."""
