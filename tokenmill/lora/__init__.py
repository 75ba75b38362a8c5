"""Multi-LoRA: PEFT adapters applied per request, many adapters and none mixed in one batch."""
