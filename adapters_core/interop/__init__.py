"""Other tools' files: reading kohya/LyCORIS/diffusers/PEFT adapters, converting between formats."""
