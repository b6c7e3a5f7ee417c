"""The generic Hugging Face Hub client: background pushes with retries, model cards. Knows no training types."""
