"""The built-in vendor simulator: OpenAI- and Anthropic-dialect endpoints with deterministic
answers, realistic streams and usage, and injectable faults (see ``faults.py``)."""

from tokenomy.sim.server import create_sim_app, run_sim
from tokenomy.sim.settings import SimSettings

__all__ = ["SimSettings", "create_sim_app", "run_sim"]
