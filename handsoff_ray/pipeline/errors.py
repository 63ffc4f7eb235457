"""Which exceptions are the user's to fix (bad spec, bad files, bad storage) rather than bugs.

The CLI prints these as one clean line and exits 2; anything else keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "user_errors"]


class UserError(Exception):
    """Raised by the pipeline for input the user must fix; the message says how."""


def user_errors() -> tuple[type[BaseException], ...]:
    # Imported lazily so that `handsoff --help` does not import torch.
    from handsoff_ray.config import SpecError
    from handsoff_ray.core.checkpoint import CheckpointError
    from handsoff_ray.core.lpips_offline import LPIPSTrunkMismatchError, LPIPSTrunkNotFoundError
    from handsoff_ray.datasets.labeled_folder import LabeledSetError
    from handsoff_ray.pipeline.storage import StorageError

    return (
        UserError, SpecError, CheckpointError, LPIPSTrunkNotFoundError, LPIPSTrunkMismatchError, LabeledSetError,
        StorageError,
    )
