"""Raw WikiArt -> WebDataset shards + manifest.json (ArtGAN, Hugging Face, synthetic). No torch."""
