"""What a failed tensor run reports: the error that stopped it, and what the run had sent and done.

A server whose engine stops answers the requests it was running with the engine's error, then drops or refuses the
others as it shuts down, all within a moment and in any order. The engine's stop is the cause and the lost
connections are its consequence, so a run that lost its server waits that moment for its other tiles' outcome.
"""

from __future__ import annotations

from concurrent.futures import Future, wait

from ..errors import Cancelled, EngineDied, FloodMapperError
from ..model_spec import ModelSpec

# How long a run whose server went away waits for the requests still in flight, to find whether its engine stopped
CAUSE_WAIT_S = 2.0


def cause(error: FloodMapperError, others: set[Future]) -> FloodMapperError:
    """The error to report: `error`, or the engine's stop that one of the `others` (the run's other tiles, whose
    worker threads see the run stopping) ran into when `error` is the server going away."""
    if isinstance(error, EngineDied) or not error.transient:
        return error
    finished, _ = wait(others, timeout=CAUSE_WAIT_S)
    for fut in finished:
        other = None if fut.cancelled() else fut.exception()
        if isinstance(other, EngineDied):
            return other
    return error


def explain(exc: FloodMapperError, spec: ModelSpec, done: int, total: int) -> None:
    """Add what the run sent and how far it got to a tile's error."""
    if isinstance(exc, EngineDied):
        exc.message += (
            f" This run sent {spec.dtype} tensors of shape [{spec.channels}, {spec.tile_height}, "
            f"{spec.tile_width}] (dtype: {spec.dtype_reason or 'from the model spec'}).")
        exc.hint += (" Restart the server with an explicit --dtype and give Flood Mapper the same "
                     "one (SERVER_DTYPE), and give the served model's config.json as MODEL_SPEC "
                     "so the tiles have the model's shape.")
    if not isinstance(exc, Cancelled) and done:
        # what was done, so the user can judge a retry (nothing of it is kept)
        exc.message += f" The run stopped after {done} of {total} tiles; no output was written."
