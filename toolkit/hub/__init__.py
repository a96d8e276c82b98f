"""Publishing: model card, upload folder and push to the Hugging Face Hub, LoRA merge, token safety."""

WEIGHT_CHOICES = ("adapter", "merged", "report")
"""What ``push --what`` can upload (here, so the command line names them without importing the Hub client)."""
