"""Blocks shared by two or more models: MLP, FM interaction, first-order term, weight init."""
