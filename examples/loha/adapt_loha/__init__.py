"""LoHa for adapt: ``dW = (w1a @ w1b) * (w2a @ w2b) * alpha / dim`` (Hadamard product of two low-rank products)."""

from adapt_loha.math import loha_delta, loha_factors
from adapt_loha.module import LoHaModule

__all__ = ["LoHaModule", "loha_delta", "loha_factors"]
