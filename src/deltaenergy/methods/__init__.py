"""Prompt-learning methods: losses (LOSSES registry) and the training loop over cached features."""
