"""Publishing: model card, upload folder and push to the Hugging Face Hub, LoRA merge, token safety."""
