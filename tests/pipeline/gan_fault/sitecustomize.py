"""Kills a `train-gan` process at a known training step, once, so a test can check that the run resumes.

Python imports `sitecustomize` at start-up from the first folder on sys.path that has one, so every process
started with this folder on PYTHONPATH loads this file, the Ray workers a driver starts included (they inherit
its environment). With HANDSOFF_TEST_GAN_KILL=<folder> and HANDSOFF_TEST_GAN_KILL_STEP=<step>:

- HANDSOFF_TEST_GAN_KILL_WHERE=driver: the process running `handsoff train-gan` (the local engine) exits
  with os._exit(137), as if SIGKILLed, when it is about to train that step;
- =worker: the first Ray worker to reach that step does (the others are then stuck in an all-reduce and
  Ray Train replaces the whole worker group).

Only the first process to reach the step dies (it creates <folder>/killed exclusively), so the rerun or the
replacement workers go on. Nothing in the package knows about this.
"""

import os
import sys

FOLDER = os.environ.get("HANDSOFF_TEST_GAN_KILL")
WHERE = os.environ.get("HANDSOFF_TEST_GAN_KILL_WHERE", "driver")


def _install(folder: str, step: int) -> None:
    import handsoff_ray.core.gan_step as gan_step

    real = gan_step.train_step

    def train_step(nets, recipe, real_images, *, step: int, **kw):
        if step == kill_at:
            try:
                os.close(os.open(os.path.join(folder, "killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(137)
        return real(nets, recipe, real_images, step=step, **kw)

    kill_at = step
    gan_step.train_step = train_step


_in_ray_worker = bool(sys.argv) and sys.argv[0].endswith("default_worker.py")
_is_driver = bool(sys.argv) and os.path.basename(sys.argv[0]) == "handsoff"
if FOLDER and ((WHERE == "worker" and _in_ray_worker) or (WHERE == "driver" and _is_driver)):
    _install(FOLDER, int(os.environ["HANDSOFF_TEST_GAN_KILL_STEP"]))
