"""Small, real PyTorch models used as checkpoint-compatibility fixtures."""
