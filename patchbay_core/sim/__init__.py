"""The sim runner: TOML sims (the book's "Sim TOML Reference") run in labs of their own."""

from .loader import load_sim_text, load_sims
from .model import Sim, Step

__all__ = ["Sim", "Step", "load_sim_text", "load_sims"]
