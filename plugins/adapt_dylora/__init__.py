"""DyLoRA: trains every rank unit..dim at once; saves an ordinary LoRA file."""
