"""lorasoups: skill composition by merging LoRA adapters (CAT, TIES, DARE, SVD, LoRA Hub, MoE).

Implements and extends "LoRA Soups: Merging LoRAs for Practical Skill Composition Tasks"
(Prabhakar et al., arXiv 2410.13025, COLING 2025).
"""

__version__ = "0.1.0"
