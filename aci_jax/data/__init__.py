"""Data: JSONL loaders with schema checks, SFT demonstrations -> token batches, a byte-level
tokenizer for models trained from scratch."""
