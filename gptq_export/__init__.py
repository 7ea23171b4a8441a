"""gptq-export."""
