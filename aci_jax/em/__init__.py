"""The AutoCode EM loop: E-step estimates and curation, M-step batches, baselines."""
