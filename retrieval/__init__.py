"""Retrieval: the scorer protocol every model implements, FAISS indices, baselines, SASRec, three-tower model."""
