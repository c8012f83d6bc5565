"""croco export tool: Hugging Face checkpoints -> croco model bundles (ONNX + safetensors)."""
