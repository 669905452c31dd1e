"""Data: record readers, sources, tokenization, packing and the LightningDataModule."""
