"""File formats: PEFT adapter folders."""
