"""The diffusion model: loading (hub id, folder, single file, bundled), speed options, LoRA adapters, tokenizer."""
